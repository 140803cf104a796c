//! The real plugin binary, driven through its unix socket and FIFOs exactly as the engine drives
//! it (tests/support/engine.rs plays the engine).

mod support;
use support::engine;

use std::time::Duration;

use engine::*;
use http_body_util::BodyExt;

const T0: i64 = 1_790_000_000_000_000_000;

/// 100k entries with 40 KB lines split into fragments, through rotation and compression.
fn workload() -> Vec<LogEntry> {
    let mut out = Vec::new();
    for i in 0..100_000i64 {
        if i % 10_000 == 5 {
            let text: Vec<u8> = (0..40_000).map(|k| b'a' + ((i + k) % 26) as u8).collect();
            out.extend(fragments(T0 + i * 1000, &text, &format!("frag{i}")));
        } else {
            let source = if i % 3 == 0 { "stderr" } else { "stdout" };
            out.push(line(
                source,
                T0 + i * 1000,
                format!("line {i} of the workload").as_bytes(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_100k_entries_with_split_lines_and_reads_them_back_in_order() {
    let plugin = PluginProcess::start();
    let api = plugin.client();
    let id = container_id(1);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo1");
    let err = api
        .start_logging(&fifo.path, &id, &[("max-size", "1m"), ("max-file", "100")])
        .await;
    assert_eq!(err, "");
    let written = workload();
    let to_write = written.clone();
    let path = fifo.path.clone();
    fifo = tokio::task::spawn_blocking(move || {
        fifo.write_entries(&to_write);
        fifo
    })
    .await
    .unwrap();
    assert_eq!(api.stop_logging(&path).await, "");
    drop(fifo);
    let got = api.read_logs(&id, "", "", -1).await;
    assert_same_entries(&got, &as_shown(&written));
    // Rotation really happened, and sealed segments were compressed.
    let dir = plugin.state.join("containers").join(&id);
    wait_until(Duration::from_secs(10), "compressed segments", || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".gz"))
    });
    let again = api.read_logs(&id, "", "", -1).await;
    assert_same_entries(&again, &as_shown(&written));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_logs_applies_tail_since_until_and_follows_until_stop() {
    let plugin = PluginProcess::start();
    let api = plugin.client();
    let id = container_id(2);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo2");
    assert_eq!(
        api.start_logging(&fifo.path, &id, &[("max-size", "2k"), ("max-file", "50")])
            .await,
        ""
    );
    let sec = 1_000_000_000i64;
    let base = 1_790_000_000 * sec;
    let written: Vec<LogEntry> = (0..100)
        .map(|i| line("stdout", base + i * sec, format!("entry {i}").as_bytes()))
        .collect();
    fifo.write_entries(&written);
    let rfc = |s: i64| {
        time::OffsetDateTime::from_unix_timestamp(1_790_000_000 + s)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    // Wait until all are visible.
    for _ in 0..500 {
        if api.read_logs(&id, "", "", -1).await.len() == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shown = as_shown(&written);
    assert_same_entries(&api.read_logs(&id, "", "", 5).await, &shown[95..]);
    assert_same_entries(&api.read_logs(&id, "", "", 0).await, &[]);
    assert_same_entries(&api.read_logs(&id, "", "", 1000).await, &shown);
    assert_same_entries(&api.read_logs(&id, &rfc(90), "", -1).await, &shown[90..]);
    assert_same_entries(&api.read_logs(&id, "", &rfc(9), -1).await, &shown[..10]);
    assert_same_entries(
        &api.read_logs(&id, &rfc(10), &rfc(19), -1).await,
        &shown[10..20],
    );
    assert_same_entries(
        &api.read_logs(&id, "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z", 3)
            .await,
        &shown[97..],
    );
    // Tail applies before since, as the engine's own drivers do.
    assert_same_entries(&api.read_logs(&id, &rfc(98), "", 5).await, &shown[98..]);

    // Follow: the last 2, then what is written while following, then the end at StopLogging.
    let answer = api
        .call(
            "/LogDriver.ReadLogs",
            &Api::read_logs_body(&id, "", "", 2, true),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let later: Vec<LogEntry> = (100..110)
        .map(|i| line("stderr", base + i * sec, format!("later {i}").as_bytes()))
        .collect();
    let path = fifo.path.clone();
    let mut received = Vec::new();
    let want: Vec<LogEntry> = shown[98..]
        .iter()
        .cloned()
        .chain(as_shown(&later))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut written = false;
    while decode_frames(&received).len() < want.len() {
        // The 200 comes before the plugin reads the tail: write the later entries only once the
        // tail arrived, or a busy machine makes them the tail (regression: CI flake).
        if !written && decode_frames(&received).len() >= 2 {
            fifo.write_entries(&later);
            written = true;
        }
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(frame) => frame,
            Err(_) => panic!(
                "follow delivered {} of {} entries in time; the store holds {}; plugin log:\n{}",
                decode_frames(&received).len(),
                want.len(),
                api.read_logs(&id, "", "", -1).await.len(),
                plugin.output()
            ),
        };
        received.extend_from_slice(
            &frame
                .expect("stream open")
                .expect("frame")
                .into_data()
                .expect("data"),
        );
    }
    assert_same_entries(&decode_frames(&received), &want);
    assert_eq!(api.stop_logging(&path).await, "");
    // After StopLogging the follow stream ends.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = body.frame().await {
            frame.expect("frame");
        }
    })
    .await;
    assert!(end.is_ok(), "follow stream did not end after StopLogging");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let mut plugin = PluginProcess::start();
    let id = container_id(3);
    let fifo = EngineFifo::create(plugin.dir.path(), "fifo3");
    let path = fifo.path.clone();
    assert_eq!(
        plugin
            .client()
            .start_logging(&path, &id, &[("max-size", "512k"), ("max-file", "1000")])
            .await,
        ""
    );
    let written: Vec<LogEntry> = (0..300_000i64)
        .flat_map(|i| {
            if i % 50_000 == 7 {
                fragments(T0 + i, &vec![b'x'; 40_000], &format!("f{i}"))
            } else {
                vec![line(
                    "stdout",
                    T0 + i,
                    format!("entry number {i}").as_bytes(),
                )]
            }
        })
        .collect();
    let to_write = written.clone();
    // Paced over about 1.5 s, so the kills below land while the container is still writing.
    let writer = std::thread::spawn(move || {
        let mut fifo = fifo;
        for chunk in to_write.chunks(to_write.len() / 30 + 1) {
            fifo.write_entries(chunk);
            std::thread::sleep(Duration::from_millis(50));
        }
        fifo
    });
    // Kill the plugin several times while the writer is busy; each restart must reopen the FIFO.
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(150 + round * 60)).await;
        if writer.is_finished() {
            break;
        }
        plugin.restart();
    }
    let fifo = tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .unwrap();
    assert_eq!(plugin.client().stop_logging(&path).await, "");
    drop(fifo);
    let got = plugin.client().read_logs(&id, "", "", -1).await;
    assert_same_entries(&got, &as_shown(&written));
    let reopened = plugin
        .output()
        .matches("reopened FIFO after restart")
        .count();
    eprintln!("restarts that reopened the FIFO mid-stream: {reopened}");
    for l in plugin.output().lines().filter(|l| l.contains("run ended")) {
        eprintln!("{l}");
    }
    assert!(
        reopened >= 2,
        "the FIFO was reopened only {reopened} times: {}",
        plugin.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_logging_refuses_bad_input_with_errors_naming_it() {
    let plugin = PluginProcess::start();
    let api = plugin.client();
    let fifo = EngineFifo::create(plugin.dir.path(), "fifo4");
    let regular = plugin.dir.path().join("regular");
    std::fs::write(&regular, b"x").unwrap();
    let id = container_id(4);
    type Case<'a> = (std::path::PathBuf, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            regular.clone(),
            id.clone(),
            vec![],
            "is not a FIFO (it is a regular file)",
        ),
        (
            plugin.dir.path().to_owned(),
            id.clone(),
            vec![],
            "is not a FIFO (it is a directory)",
        ),
        (
            "/dev/zero".into(),
            id.clone(),
            vec![],
            "is not a FIFO (it is a character device)",
        ),
        (
            fifo.path.clone(),
            "../../etc".into(),
            vec![],
            "is not 64 lowercase hex digits",
        ),
        (
            fifo.path.clone(),
            id.clone(),
            vec![("max-size", "12q")],
            "log-opt max-size: \"12q\" is not valid",
        ),
        (
            fifo.path.clone(),
            id.clone(),
            vec![("max-sise", "1m")],
            "did you mean \"max-size\"",
        ),
        (
            fifo.path.clone(),
            id.clone(),
            vec![("max-file", "1"), ("compress", "true")],
            "compress=true needs max-file",
        ),
    ];
    for (file, cid, config, want) in cases {
        let err = api.start_logging(&file, &cid, &config).await;
        assert!(
            err.contains(want),
            "{file:?} {cid} {config:?}: got {err:?}, want {want:?}"
        );
    }
    assert!(!plugin
        .state
        .join("containers")
        .join("..")
        .join("..")
        .join("etc")
        .exists());
    // Engine keys and other drivers' options are accepted.
    let err = api
        .start_logging(
            &fifo.path,
            &id,
            &[
                ("mode", "non-blocking"),
                ("max-buffer-size", "4m"),
                ("cache-disabled", "true"),
                ("tag", "x"),
            ],
        )
        .await;
    assert_eq!(err, "");
    assert_eq!(api.stop_logging(&fifo.path).await, "");
    assert!(
        !plugin.output().contains("hunter2"),
        "container env leaked into the plugin log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_as_the_engine_expects_and_refuse_garbage_clearly() {
    let plugin = PluginProcess::start();
    let api = plugin.client();
    api.assert_activates_as_log_driver().await;
    let (status, body) = api.call_text("/LogDriver.Nope", "{}").await;
    assert_eq!(status, 404);
    assert!(body.contains("unknown endpoint /LogDriver.Nope"), "{body}");
    let (status, body) = api.call_text("/LogDriver.StartLogging", "{not json").await;
    assert_eq!(status, 400);
    assert!(body.contains("not the JSON"), "{body}");
    // Over the body limit: a 413, or the connection cut while the client is still sending.
    if let Ok(answer) = api
        .try_call("/LogDriver.StartLogging", &"x".repeat(9 << 20))
        .await
    {
        assert_eq!(answer.status(), 413);
        assert_eq!(
            answer.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "a 413 whose body is left unread must close its connection"
        );
    }
    // Regression: the plugin closed the connection it refused a body on without saying
    // `Connection: close`, so the client pooled it and the StopLogging below failed once in a
    // full run with "client error (SendRequest)". The same client must go on working.
    // StopLogging never fails, even for a FIFO it never saw.
    assert_eq!(
        api.call_err("/LogDriver.StopLogging", r#"{"File":"/nope"}"#)
            .await,
        ""
    );
    let (status, body) = api
        .call_text(
            "/LogDriver.ReadLogs",
            &Api::read_logs_body(&container_id(9), "yesterday", "", -1, false),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("Config.Since"), "{body}");
    // Still serving after all that.
    assert_eq!(api.call_text("/LogDriver.Capabilities", "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_without_stop_ends_the_run_and_a_new_run_appends_to_the_same_copy() {
    let plugin = PluginProcess::start();
    let api = plugin.client();
    let id = container_id(5);
    let mut first = EngineFifo::create(plugin.dir.path(), "fifo5a");
    assert_eq!(api.start_logging(&first.path, &id, &[]).await, "");
    first.write_entries(&[line("stdout", T0, b"before engine restart")]);
    // Live-restore: the engine's end goes away without a StopLogging.
    drop(first);
    wait_until(Duration::from_secs(5), "the run to end at EOF", || {
        plugin.output().contains("Eof")
    });
    let mut second = EngineFifo::create(plugin.dir.path(), "fifo5b");
    assert_eq!(api.start_logging(&second.path, &id, &[]).await, "");
    second.write_entries(&[line("stdout", T0 + 1, b"after engine restart")]);
    assert_eq!(api.stop_logging(&second.path).await, "");
    let got = api.read_logs(&id, "", "", -1).await;
    let lines: Vec<_> = got
        .iter()
        .map(|e| String::from_utf8_lossy(&e.line).into_owned())
        .collect();
    assert_eq!(
        lines,
        vec!["before engine restart\n", "after engine restart\n"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_pipe_and_the_next_start_resumes() {
    let mut plugin = PluginProcess::start();
    let id = container_id(6);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo6");
    assert_eq!(
        plugin.client().start_logging(&fifo.path, &id, &[]).await,
        ""
    );
    let written: Vec<LogEntry> = (0..1000)
        .map(|i| line("stdout", T0 + i, format!("n{i}").as_bytes()))
        .collect();
    fifo.write_entries(&written[..500]);
    let started = std::time::Instant::now();
    let status = plugin.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    // Written while the plugin is down: waits in the pipe.
    fifo.write_entries(&written[500..]);
    plugin.restart();
    assert_eq!(plugin.client().stop_logging(&fifo.path).await, "");
    assert_same_entries(
        &plugin.client().read_logs(&id, "", "", -1).await,
        &as_shown(&written),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_logs_on_stop_removes_the_copy_when_set() {
    let plugin = PluginProcess::start_with_env(&[("DESTROY_LOGS_ON_STOP", "true")]);
    let api = plugin.client();
    let id = container_id(7);
    let mut fifo = EngineFifo::create(plugin.dir.path(), "fifo7");
    assert_eq!(api.start_logging(&fifo.path, &id, &[]).await, "");
    fifo.write_entries(&[line("stdout", T0, b"gone soon")]);
    assert_eq!(api.stop_logging(&fifo.path).await, "");
    wait_until(Duration::from_secs(5), "the copy to be removed", || {
        !plugin.state.join("containers").join(&id).exists()
    });
    assert!(api.read_logs(&id, "", "", -1).await.is_empty());
}
