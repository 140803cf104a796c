//! End-to-end tests against a real Docker Engine: a private dockerd, the plugin installed from a
//! loopback registry, busybox containers logging through it (see `support/docker.rs`).
//!
//! One engine serves every scenario, run in sequence by `support/scenario.rs`
//! (`E2E_ONLY=name,name` runs a subset); every failure is reported at the end with the tail of
//! the engine's log.
//!
//! The test is `#[ignore]`d so a plain `cargo test` stays quick and needs no root; `make test`,
//! `make e2e` and `.ci/run` run it explicitly, and there it fails (never skips) when the machine
//! lacks Docker.

mod support;
use support::es_server;

use std::io::{BufRead, BufReader};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use es_server::{Auth, EsServer, ServerOptions};
use support::docker::{run_with_timeout, signal, tail_lines, Docker, DRIVER, IMAGE};
use support::noida::Noida;
use support::opensearch::Cluster;
use support::scenario::{self, assert_numbers, first_difference, numbers, secs, wait_child};
use support::wait_for;

type Scenario = fn(&Docker);

const SCENARIOS: &[(&str, Scenario)] = &[
    (
        "stdout_stderr_of_stopped_container",
        stdout_stderr_of_stopped_container,
    ),
    ("tail", tail),
    ("since_until", since_until),
    ("follow", follow),
    (
        "restarted_container_keeps_both_runs",
        restarted_container_keeps_both_runs,
    ),
    (
        "hundred_thousand_lines_in_order",
        hundred_thousand_lines_in_order,
    ),
    (
        "logs_are_served_by_the_plugin",
        logs_are_served_by_the_plugin,
    ),
    ("bad_log_opts_fail_docker_run", bad_log_opts_fail_docker_run),
    ("rotation_keeps_tail_correct", rotation_keeps_tail_correct),
    (
        "plugin_killed_mid_stream_loses_nothing",
        plugin_killed_mid_stream_loses_nothing,
    ),
    (
        "containers_ship_to_elasticsearch",
        containers_ship_to_elasticsearch,
    ),
    (
        "json_lines_and_stack_traces_become_documents",
        json_lines_and_stack_traces_become_documents,
    ),
    (
        "readme_recipe_ships_with_a_password_and_reinstall_keeps_it",
        readme_recipe_ships_with_a_password_and_reinstall_keeps_it,
    ),
    (
        "containers_ship_to_a_real_opensearch_cluster",
        containers_ship_to_a_real_opensearch_cluster,
    ),
    (
        "engine_events_reach_elasticsearch",
        engine_events_reach_elasticsearch,
    ),
    (
        "plugin_stops_promptly_on_disable",
        plugin_stops_promptly_on_disable,
    ),
];

#[test]
#[ignore = "starts a private Docker Engine (root, docker.io, busybox-static, docker-registry): run `make e2e`"]
fn e2e_docker_engine() {
    scenario::run_on_new_engine(SCENARIOS, |docker, scenario| scenario(docker));
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// stdout and stderr come back on their own streams, from a container that has exited
/// (the engine's throwaway-logger path: StartLogging, ReadLogs, StopLogging).
fn stdout_stderr_of_stopped_container(docker: &Docker) {
    let name = "e2e-streams";
    docker.run_logged(
        name,
        &[],
        "echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2; echo out-3",
    );
    assert_eq!(docker.wait_exit(name, secs(60)), 0);
    let logs = docker.logs(name, &[]);
    assert_eq!(
        logs.stdout, "out-1\nout-2\nout-3\n",
        "stdout of docker logs"
    );
    assert_eq!(logs.stderr, "err-1\nerr-2\n", "stderr of docker logs");
    // Asked again, the answer is the same: reading must not consume or rotate the copy.
    let again = docker.logs(name, &[]);
    assert_eq!(
        (again.stdout, again.stderr),
        (logs.stdout, logs.stderr),
        "a second docker logs"
    );
    docker.docker_ok(&["rm", name]);
}

fn tail(docker: &Docker) {
    let name = "e2e-tail";
    docker.run_logged(name, &[], "seq 1 1000");
    assert_eq!(docker.wait_exit(name, secs(60)), 0);
    assert_eq!(
        docker.logs(name, &["--tail", "5"]).stdout,
        numbers(996..=1000)
    );
    assert_eq!(docker.logs(name, &["--tail", "1"]).stdout, "1000\n");
    assert_eq!(docker.logs(name, &["--tail", "0"]).stdout, "", "--tail 0");
    let all = numbers(1..=1000);
    assert_eq!(
        docker.logs(name, &["--tail", "1000"]).stdout,
        all,
        "--tail 1000"
    );
    assert_eq!(
        docker.logs(name, &["--tail", "5000"]).stdout,
        all,
        "--tail 5000"
    );
    assert_eq!(
        docker.logs(name, &["--tail", "all"]).stdout,
        all,
        "--tail all"
    );
    docker.docker_ok(&["rm", name]);
}

/// --since/--until at instants between lines printed 300 ms apart, taken from the plugin's
/// own timestamps (`docker logs --timestamps`).
fn since_until(docker: &Docker) {
    let name = "e2e-since";
    docker.run_logged(
        name,
        &[],
        "for i in 1 2 3 4 5 6; do echo s$i; sleep 0.3; done",
    );
    assert_eq!(docker.wait_exit(name, secs(60)), 0);
    let stamped = docker.logs(name, &["--timestamps"]).stdout;
    let times: Vec<(i128, &str)> = stamped
        .lines()
        .map(|l| {
            let (ts, text) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("no timestamp in {l:?}"));
            (parse_rfc3339_nanos(ts), text)
        })
        .collect();
    let texts: Vec<&str> = times.iter().map(|(_, t)| *t).collect();
    assert_eq!(texts, ["s1", "s2", "s3", "s4", "s5", "s6"], "--timestamps");
    assert!(
        times.windows(2).all(|w| w[0].0 < w[1].0),
        "timestamps not increasing: {stamped}"
    );
    let between = |a: usize, b: usize| unix_arg((times[a].0 + times[b].0) / 2);

    let since = between(1, 2); // between s2 and s3
    assert_eq!(
        docker.logs(name, &["--since", &since]).stdout,
        "s3\ns4\ns5\ns6\n",
        "--since {since}"
    );
    let until = between(3, 4); // between s4 and s5
    assert_eq!(
        docker.logs(name, &["--until", &until]).stdout,
        "s1\ns2\ns3\ns4\n",
        "--until {until}"
    );
    assert_eq!(
        docker
            .logs(name, &["--since", &since, "--until", &until])
            .stdout,
        "s3\ns4\n",
        "--since {since} --until {until}"
    );
    assert_eq!(
        docker
            .logs(name, &["--since", &since, "--tail", "2"])
            .stdout,
        "s5\ns6\n",
        "--since with --tail 2"
    );
    let after_all = unix_arg(times[5].0 + 1_000_000_000);
    assert_eq!(
        docker.logs(name, &["--since", &after_all]).stdout,
        "",
        "--since after the last line"
    );
    assert_eq!(
        docker.logs(name, &["--since", "1h"]).stdout,
        "s1\ns2\ns3\ns4\ns5\ns6\n",
        "--since 1h"
    );
    docker.docker_ok(&["rm", name]);
}

/// `docker logs -f` streams lines while the container runs, and ends by itself when the
/// container's logging stops.
fn follow(docker: &Docker) {
    let name = "e2e-follow";
    docker.run_logged(
        name,
        &[],
        "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo f$i; sleep 0.1; done",
    );
    wait_for(secs(30), "f1 in docker logs", || {
        docker
            .logs(name, &[])
            .stdout
            .starts_with("f1\n")
            .then_some(())
    });
    let mut child = docker.spawn_follow(name);
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut got: Vec<(Instant, String)> = Vec::new();
    let deadline = Instant::now() + secs(60);
    while got.last().map(|(_, l)| l.as_str()) != Some("f40") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(item) => got.push(item),
            Err(_) => break,
        }
    }
    let exited_by_itself = wait_child(&mut child, secs(20));
    let _ = reader.join();
    let lines: Vec<&str> = got.iter().map(|(_, l)| l.as_str()).collect();
    let expected: Vec<String> = (1..=40).map(|i| format!("f{i}")).collect();
    assert_eq!(lines, expected, "lines seen by docker logs -f");
    let spread = got.last().unwrap().0 - got.first().unwrap().0;
    assert!(
        spread >= Duration::from_secs(1),
        "docker logs -f delivered all 40 lines within {spread:?}: it did not stream them as \
         the container printed them (4 s)"
    );
    assert!(
        exited_by_itself,
        "docker logs -f still running 20 s after the container's last line"
    );
    docker.docker_ok(&["rm", "-f", name]);
}

/// A container started again appends to the same copy: both runs' lines, in order.
fn restarted_container_keeps_both_runs(docker: &Docker) {
    let name = "e2e-restart";
    let script = "n=$(cat /count 2>/dev/null || echo 0); n=$((n+1)); echo $n >/count; \
                  echo run-$n; echo err-run-$n >&2";
    docker.run_logged(name, &[], script);
    assert_eq!(docker.wait_exit(name, secs(60)), 0);
    assert_eq!(docker.logs(name, &[]).stdout, "run-1\n");
    docker.docker_ok(&["start", name]);
    assert_eq!(docker.wait_exit(name, secs(60)), 0);
    let logs = docker.logs(name, &[]);
    assert_eq!(logs.stdout, "run-1\nrun-2\n", "stdout after docker start");
    assert_eq!(
        logs.stderr, "err-run-1\nerr-run-2\n",
        "stderr after docker start"
    );
    docker.docker_ok(&["rm", name]);
}

fn hundred_thousand_lines_in_order(docker: &Docker) {
    let name = "e2e-100k";
    let t = Instant::now();
    docker.run_logged(name, &[], "seq 1 100000");
    assert_eq!(docker.wait_exit(name, secs(180)), 0);
    let ran = t.elapsed();
    let t = Instant::now();
    let logs = docker.logs(name, &[]);
    eprintln!(
        "e2e:   100k lines: container ran {ran:.1?}, docker logs read them in {:.1?}",
        t.elapsed()
    );
    assert_numbers(&logs.stdout, 1, 100_000, "docker logs of seq 1 100000");
    assert_eq!(logs.stderr, "");
    assert_eq!(
        docker.logs(name, &["--tail", "3"]).stdout,
        numbers(99_998..=100_000)
    );
    docker.docker_ok(&["rm", name]);
}

/// With the engine's cache disabled, only the plugin can answer `docker logs`; and the plugin
/// says in its own log (which the engine tags with the plugin id) that it served ReadLogs.
fn logs_are_served_by_the_plugin(docker: &Docker) {
    let name = "e2e-served";
    let marker = format!(
        "marker-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let id = docker.run_logged(name, &["cache-disabled=true"], &format!("echo {marker}"));
    assert_eq!(docker.wait_exit(name, secs(60)), 0);
    assert_eq!(docker.logs(name, &[]).stdout, format!("{marker}\n"));
    let short = &id[..12];
    let plugin_tag = format!("plugin={}", docker.plugin_id());
    let line = wait_for(secs(15), "the plugin's ReadLogs log line", || {
        docker
            .dockerd_log()
            .lines()
            .find(|l| l.contains("ReadLogs") && l.contains(short) && l.contains(&plugin_tag))
            .map(str::to_string)
    });
    eprintln!("e2e:   plugin said: {line}");
    docker.docker_ok(&["rm", name]);
}

/// A bad value or a misspelled option of ours makes `docker run` fail with a message naming
/// it; good options and the engine's own keys are accepted.
fn bad_log_opts_fail_docker_run(docker: &Docker) {
    let run = |name: &str, opts: &[&str]| {
        let mut args = vec![
            "run",
            "--name",
            name,
            "--network",
            "none",
            "--log-driver",
            DRIVER,
        ];
        for opt in opts {
            args.extend(["--log-opt", opt]);
        }
        args.extend([IMAGE, "echo", "accepted"]);
        let out = docker.docker(&args);
        let _ = docker.docker(&["rm", "-f", name]);
        out
    };
    let good = run(
        "e2e-opts-good",
        &[
            "max-size=1m",
            "max-file=2",
            "compress=false",
            "mode=blocking",
        ],
    );
    assert!(
        good.success() && good.stdout == "accepted\n",
        "valid log-opts refused: {} {}",
        good.stdout,
        good.stderr
    );
    let bad: [(&[&str], &str); 9] = [
        (&["max-size=12q"], "max-size"),
        (&["max-sise=1m"], "max-sise"),
        (&["max-file=zero"], "max-file"),
        // Like the engine's drivers: nothing to compress when there is one file.
        (&["max-file=1", "compress=true"], "compress"),
        // A static field may not replace one the plugin writes.
        (&["hosts=127.0.0.1:9", "fields.message=x"], "message"),
        // Incomplete or conflicting credentials are named.
        (&["hosts=127.0.0.1:9", "password=p"], "password"),
        (
            &["hosts=https://127.0.0.1", "api_key=id:key", "user=u"],
            "api_key",
        ),
        // Docker's tag template takes its placeholders only; a regex must compile (also
        // without hosts: the local copy alone still checks them).
        (&["tag={{.Name | upper}}"], "{{.ImageName}}"),
        (&["env-regex=("], "env-regex"),
    ];
    for (opts, must_name) in bad {
        let opt = opts.join(" --log-opt ");
        let out = run("e2e-opts-bad", opts);
        assert!(
            !out.success(),
            "docker run --log-opt {opt} succeeded; stdout {:?}",
            out.stdout
        );
        // The plugin's messages say "log-opt"; the engine's own message for a bad max-size
        // ("invalid value for max-size", from its cache for drivers that cannot read) would
        // mean the plugin never judged the option.
        assert!(
            out.stderr.contains("log-opt") && out.stderr.contains(must_name),
            "docker run --log-opt {opt} failed without the plugin's message naming {must_name}: {}",
            out.stderr.trim()
        );
        assert!(
            !out.stdout.contains("accepted"),
            "the container ran despite --log-opt {opt}"
        );
    }
}

/// Small max-size/max-file: old lines rotate away, what is kept is the newest contiguous run,
/// --tail is right across rotated (compressed) segments, and compression happened.
fn rotation_keeps_tail_correct(docker: &Docker) {
    let name = "e2e-rotate";
    let id = docker.run_logged(name, &["max-size=10k", "max-file=3"], "seq 1 20000");
    assert_eq!(docker.wait_exit(name, secs(120)), 0);
    let all = docker.logs(name, &[]).stdout;
    let kept: Vec<&str> = all.lines().collect();
    // One record of "12345" is about 33 bytes, so a 10k segment holds about 300 lines.
    assert!(
        kept.len() >= 250 && kept.len() < 20_000,
        "expected rotation to keep between 250 and 19999 of 20000 lines, kept {}",
        kept.len()
    );
    let first: u64 = kept[0].parse().expect("a number");
    assert_numbers(&all, first, 20_000, "the lines kept after rotation");
    assert_eq!(
        docker.logs(name, &["--tail", "10"]).stdout,
        numbers(19_991..=20_000)
    );
    let n = kept.len();
    assert_eq!(
        docker.logs(name, &["--tail", &n.to_string()]).stdout,
        all,
        "--tail {n} (everything kept)"
    );
    let half = n / 2;
    assert_eq!(
        docker.logs(name, &["--tail", &half.to_string()]).stdout,
        numbers(20_001 - half as u64..=20_000),
        "--tail {half}"
    );
    // compress defaults to true: some rotated segment of this container becomes gzip.
    wait_for(secs(20), "a gzip-compressed rotated segment", || {
        gzip_files_mentioning(docker.state_dir(), &id).then_some(())
    });
    docker.docker_ok(&["rm", name]);
}

/// kill -9 the plugin while a container prints: the engine restarts the plugin, the restarted
/// plugin reopens the FIFO (else the 1+ MB burst that follows blocks the container), and
/// `docker logs` has every line in order.
fn plugin_killed_mid_stream_loses_nothing(docker: &Docker) {
    let name = "e2e-crash";
    let script = "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo tick-$i; sleep 0.1; done; \
                  seq 1 200000; echo done";
    docker.run_logged(name, &[], script);
    wait_for(secs(30), "tick-5 in docker logs", || {
        docker
            .logs(name, &[])
            .stdout
            .contains("tick-5\n")
            .then_some(())
    });
    let old = docker
        .plugin_pid()
        .unwrap_or_else(|| docker.fail("cannot find the plugin process (es-logging-plugin serve)"));
    let killed_at = Instant::now();
    signal(old, "KILL");
    let new = wait_for(secs(30), "the engine to restart the killed plugin", || {
        docker.plugin_pid().filter(|pid| *pid != old)
    });
    eprintln!(
        "e2e:   plugin pid {old} killed; the engine restarted it as pid {new} within {:.1?}",
        killed_at.elapsed()
    );
    let status = docker.wait_exit(name, secs(120));
    assert_eq!(status, 0, "container exit code");
    let logs = docker.logs(name, &[]).stdout;
    let mut expected: String = (1..=60).map(|i| format!("tick-{i}\n")).collect();
    expected.push_str(&numbers(1..=200_000));
    expected.push_str("done\n");
    if logs != expected {
        panic!(
            "docker logs after the plugin was killed: {}",
            first_difference(&logs, &expected)
        );
    }
    let enabled = docker.docker_ok(&["plugin", "inspect", "-f", "{{.Enabled}}", DRIVER]);
    assert_eq!(enabled, "true", "plugin still enabled after its crash");
    docker.docker_ok(&["rm", name]);
}

/// EVENTS=true: the engine's own events (container, image, volume) reach Elasticsearch through
/// the plugin's mount of the engine socket, each once, also those that happen while the plugin
/// is killed and restarted by the engine.
fn engine_events_reach_elasticsearch(docker: &Docker) {
    let noida = Noida::start();
    let hosts = format!("ES_HOSTS={}", noida.url());
    docker.set_plugin(&["EVENTS=true", &hosts, "ES_FLUSH_INTERVAL=200ms"]);
    let result = catch_unwind(AssertUnwindSafe(|| events_scenario(docker, &noida)));
    docker.set_plugin(&["EVENTS=false", "ES_HOSTS=", "ES_FLUSH_INTERVAL="]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn events_scenario(docker: &Docker, noida: &Noida) {
    let index = "logs-docker.events-default";
    docker.wait_events_collector();
    let id = docker.run_logged("e2e-events", &[], "exit 3");
    assert_eq!(docker.wait_exit("e2e-events", secs(60)), 3);
    docker.docker_ok(&["rm", "e2e-events"]);
    docker.docker_ok(&["tag", IMAGE, "e2e/events:1"]);
    docker.docker_ok(&["rmi", "e2e/events:1"]);
    // An image imported from a tarball, then removed: import, untag, delete.
    let tar_dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(tar_dir.path().join("hello"), "hello\n").expect("write a file to import");
    let tarball = tar_dir.path().join("image.tar");
    let tarred = std::process::Command::new("tar")
        .arg("-C")
        .arg(tar_dir.path())
        .arg("-cf")
        .arg(&tarball)
        .arg("hello")
        .status()
        .expect("run tar");
    assert!(tarred.success(), "tar an image");
    let imported = docker.docker_ok(&["import", tarball.to_str().unwrap(), "e2e/imported:1"]);
    docker.docker_ok(&["rmi", "e2e/imported:1"]);
    docker.docker_ok(&["volume", "create", "e2e-volume"]);
    docker.docker_ok(&["volume", "rm", "e2e-volume"]);
    let has = |docs: &[(String, serde_json::Value)], kind: &str, action: &str, actor: &str| {
        docs.iter()
            .filter(|(_, d)| {
                d["docker"]["event"]["type"] == kind
                    && d["docker"]["event"]["action"] == action
                    && d["docker"]["event"]["actor"]["id"] == actor
            })
            .count()
    };
    let expected: Vec<(&str, &str, String)> = vec![
        ("container", "create", id.clone()),
        ("container", "start", id.clone()),
        ("container", "die", id.clone()),
        ("container", "destroy", id.clone()),
        ("volume", "create", "e2e-volume".into()),
        ("volume", "destroy", "e2e-volume".into()),
    ];
    let docs = wait_for(
        secs(60),
        "the container and volume events in noida-db",
        || {
            let docs = noida.documents(index);
            expected
                .iter()
                .all(|(k, a, i)| has(&docs, k, a, i) >= 1)
                .then_some(docs)
        },
    );
    let die = docs
        .iter()
        .find(|(_, d)| d["docker"]["event"]["action"] == "die")
        .map(|(_, d)| d.clone())
        .unwrap();
    assert_eq!(die["process"]["exit_code"], 3);
    assert_eq!(die["event"]["outcome"], "failure");
    assert_eq!(die["container"]["name"], "e2e-events");
    assert!(
        docs.iter()
            .any(|(_, d)| d["docker"]["event"]["type"] == "image"
                && d["docker"]["event"]["action"] == "untag"),
        "the untag of e2e/events:1"
    );
    wait_for(secs(30), "the import and delete of e2e/imported:1", || {
        let docs = noida.documents(index);
        (has(&docs, "image", "import", &imported) == 1
            && has(&docs, "image", "delete", &imported) == 1)
            .then_some(())
    });

    // Killed: what happens before the engine has restarted it is caught up with since=.
    let old = docker.plugin_pid().expect("the plugin's pid");
    signal(old, "KILL");
    docker.docker_ok(&["volume", "create", "e2e-volume-2"]);
    wait_for(secs(30), "the engine to restart the killed plugin", || {
        docker.plugin_pid().filter(|pid| *pid != old)
    });
    docker.docker_ok(&["volume", "rm", "e2e-volume-2"]);
    wait_for(secs(60), "the events around the kill in noida-db", || {
        let docs = noida.documents(index);
        (has(&docs, "volume", "create", "e2e-volume-2") >= 1
            && has(&docs, "volume", "destroy", "e2e-volume-2") >= 1)
            .then_some(())
    });
    // A replay would be another document of the same event: each must be there once.
    std::thread::sleep(secs(2));
    let final_docs = noida.documents(index);
    for (k, a, i) in expected
        .iter()
        .map(|(k, a, i)| (*k, *a, i.as_str()))
        .chain([
            ("volume", "create", "e2e-volume-2"),
            ("volume", "destroy", "e2e-volume-2"),
        ])
    {
        assert_eq!(has(&final_docs, k, a, i), 1, "{k} {a} {i}");
    }
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for (_, d) in &final_docs {
        let key = format!(
            "{} {}",
            d["docker"]["event"]["type"].as_str().unwrap_or("?"),
            d["event"]["action"].as_str().unwrap_or("?")
        );
        *seen.entry(key).or_default() += 1;
    }
    eprintln!("e2e:   engine events indexed: {seen:?}");
}

/// The plugin is PID 1 in its namespace: without a SIGTERM handler the engine waits 10 s and
/// SIGKILLs it on every disable, upgrade and engine shutdown.
fn plugin_stops_promptly_on_disable(docker: &Docker) {
    docker.remove_all_containers();
    let t = Instant::now();
    docker.docker_ok(&["plugin", "disable", DRIVER]);
    let took = t.elapsed();
    docker.docker_ok(&["plugin", "enable", DRIVER]);
    assert!(
        took < secs(8),
        "docker plugin disable took {took:.1?}: the plugin does not exit on SIGTERM \
         (the engine SIGKILLs it after 10 s)"
    );
    let out = docker.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--log-driver",
        DRIVER,
        IMAGE,
        "echo",
        "again",
    ]);
    assert!(
        out.success() && out.stdout == "again\n",
        "plugin unusable after disable/enable: {} {}",
        out.stdout,
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A container's lines reach Elasticsearch (noida-db, on loopback: the plugin runs in the host's
/// network) through the installed plugin, each once, with the container's fields; `docker logs`
/// still works beside it.
fn containers_ship_to_elasticsearch(docker: &Docker) {
    let noida = Noida::start();
    let name = "e2e-ship";
    let hosts = format!("hosts={}", noida.url());
    let index = "logs-e2e-default";
    let id = docker.run_logged_with(
        name,
        &[
            "--label",
            "team=core",
            "--label",
            "com.example.tier=front",
            "--label",
            "unshipped=yes",
            "-e",
            "DEPLOY=blue",
            "-e",
            "APP_MODE=fast",
            "-e",
            "DB_PASSWORD=e2e-secret-5c1f",
        ],
        &[
            &hosts,
            &format!("index={index}"),
            "max-size=200k",
            "max-file=3",
            "tags=e2e,shipping",
            "fields=env=test,service.name=e2e-ship",
            "fields.team=core, platform",
            // Docker's standard options, with Docker's meanings.
            "tag={{.Name}}/{{.ImageName}}/{{.ID}}",
            "labels=team",
            "labels-regex=^com\\.example\\.",
            "env=DEPLOY",
            "env-regex=^APP_",
        ],
        // The stderr line first: the engine copies stdout and stderr to the FIFO in two
        // goroutines, so a line printed after 20000 others may be stored before their end
        // (20.10) or after it (26.1), and the `--tail 2` below would depend on the race.
        "echo to-stderr >&2; seq 1 20000",
    );
    assert_eq!(docker.wait_exit(name, secs(120)), 0);
    let t = Instant::now();
    wait_for(secs(120), "20001 documents in noida-db", || {
        (noida.count(index) >= 20_001).then_some(())
    });
    eprintln!(
        "e2e:   20001 lines indexed {:.1?} after the container exited",
        t.elapsed()
    );
    // Nothing twice: the count settles at exactly the lines printed.
    std::thread::sleep(secs(2));
    assert_eq!(noida.count(index), 20_001);
    let (status, body) = noida.request(
        "POST",
        &format!("/{index}/_search"),
        r#"{"query":{"term":{"stream":"stderr"}}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hits = answer["hits"]["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 1, "{body}");
    let doc = &hits[0]["_source"];
    assert_eq!(doc["message"], "to-stderr");
    assert_eq!(doc["container"]["id"], id.as_str());
    assert_eq!(doc["container"]["name"], name);
    assert_eq!(doc["container"]["image"]["name"], "busybox");
    assert_eq!(doc["container"]["image"]["tag"], "local");
    // Static tags and fields, as the engine passed the log-opts.
    assert_eq!(doc["tags"], serde_json::json!(["e2e", "shipping"]));
    assert_eq!(doc["env"], "test");
    assert_eq!(doc["service"]["name"], "e2e-ship");
    assert_eq!(doc["team"], "core, platform");
    // tag, labels and env as the engine passed them (README, Docker's standard log-opts).
    assert_eq!(
        doc["docker"]["tag"],
        format!("{name}/busybox:local/{}", &id[..12])
    );
    assert_eq!(
        doc["container"]["labels"],
        serde_json::json!({"team": "core", "com_example_tier": "front"})
    );
    assert_eq!(
        doc["process"]["env_vars"],
        serde_json::json!(["APP_MODE=fast", "DEPLOY=blue"])
    );
    // The variable nobody asked for is in no document (all of a container's documents carry
    // the same container part).
    assert!(
        !doc.to_string().contains("e2e-secret-5c1f"),
        "the unasked env reached a document: {doc}"
    );
    // docker logs keeps its max-file window, unaffected by shipping.
    assert_eq!(
        docker.logs(name, &["--tail", "2"]).stdout,
        numbers(19_999..=20_000)
    );
    docker.docker_ok(&["rm", name]);
}

/// What a container of `json_lines_and_stack_traces_become_documents` prints: JSON lines on
/// stdout (one of 40 KB, which the engine splits at 16 KiB) and a stack trace on stderr.
const TRACES: [(&str, &str); 3] = [
    (
        "java",
        "Exception in thread \"main\" java.lang.IllegalStateException: boom\n\tat shop.Cart.add(Cart.java:12)\n\tat shop.Main.main(Main.java:3)\nCaused by: java.io.IOException: disk full\n\t... 2 more",
    ),
    (
        "python",
        "Traceback (most recent call last):\n  File \"/app/main.py\", line 3, in <module>\n    main()\nZeroDivisionError: division by zero",
    ),
    (
        "go",
        "panic: runtime error: index out of range [3] with length 2\n\ngoroutine 1 [running]:\nmain.main()\n\t/app/main.go:5 +0x1d\nexit status 2",
    ),
];

/// JSON lines (one longer than 16 KiB) and Java, Python and Go stack traces, one container per
/// preset, on the real engine: each JSON line is one document with its fields (the long one
/// decoded whole after the engine's fragments are rejoined), each trace one document of its
/// lines, and `docker logs` prints every line exactly as written.
fn json_lines_and_stack_traces_become_documents(docker: &Docker) {
    let noida = Noida::start();
    let hosts = format!("hosts={}", noida.url());
    let index = "logs-e2emeaning-default";
    let pad = "p".repeat(40_000);
    let json_lines = [
        r#"{"level":"info","msg":"starting","n":1}"#.to_owned(),
        format!(r#"{{"level":"warn","msg":"long","pad":"{pad}"}}"#),
        r#"{"level":"info","msg":"done","n":3}"#.to_owned(),
    ];
    let mut ids = Vec::new();
    for (preset, trace) in TRACES {
        let name = format!("e2e-meaning-{preset}");
        // printf %s prints each line as given; the trace goes to stderr between JSON lines.
        let script = format!(
            "printf '%s\\n' '{}'; printf '%s\\n' {} >&2; pad=$(head -c 40000 /dev/zero | tr '\\0' p); printf '{{\"level\":\"warn\",\"msg\":\"long\",\"pad\":\"%s\"}}\\n' \"$pad\"; printf '%s\\n' '{}'",
            json_lines[0],
            trace
                .lines()
                .map(|l| format!("'{l}'"))
                .collect::<Vec<_>>()
                .join(" "),
            json_lines[2],
        );
        let id = docker.run_logged_with(
            &name,
            &[],
            &[
                &hosts,
                &format!("index={index}"),
                "json=true",
                "json.ecs=true",
                &format!("multiline.preset={preset}"),
            ],
            &script,
        );
        assert_eq!(docker.wait_exit(&name, secs(60)), 0);
        let logs = docker.logs(&name, &[]);
        assert_eq!(
            logs.stdout,
            format!("{}\n", json_lines.join("\n")),
            "docker logs stdout of {name}"
        );
        assert_eq!(
            logs.stderr,
            format!("{trace}\n"),
            "docker logs stderr of {name}"
        );
        ids.push((preset, id, name));
    }
    wait_for(secs(120), "12 documents in noida-db", || {
        (noida.count(index) >= 12).then_some(())
    });
    std::thread::sleep(secs(2));
    let docs = noida.documents(index);
    assert_eq!(docs.len(), 12, "3 containers x (3 JSON lines + 1 trace)");
    for (preset, id, name) in &ids {
        let mine: Vec<&serde_json::Value> = docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["container"]["id"] == id.as_str())
            .collect();
        let trace = TRACES.iter().find(|(p, _)| p == preset).map(|(_, t)| *t);
        let stderr: Vec<&&serde_json::Value> =
            mine.iter().filter(|d| d["stream"] == "stderr").collect();
        assert_eq!(stderr.len(), 1, "{name}: the trace is one document");
        assert_eq!(
            stderr[0]["message"].as_str(),
            trace,
            "{name}: the trace whole"
        );
        let mut stdout: Vec<(&str, &str)> = mine
            .iter()
            .filter(|d| d["stream"] == "stdout")
            .map(|d| {
                (
                    d["message"].as_str().unwrap_or_default(),
                    d["log"]["level"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        stdout.sort();
        assert_eq!(
            stdout,
            [("done", "info"), ("long", "warn"), ("starting", "info")],
            "{name}: the JSON lines' msg and level"
        );
        let long = mine
            .iter()
            .find(|d| d["message"] == "long")
            .expect("the long line");
        assert_eq!(
            long["json"]["pad"].as_str().map(str::len),
            Some(40_000),
            "{name}: the 40 KB line decoded whole"
        );
        assert!(long.get("error").is_none(), "{name}: {}", long["error"]);
        docker.docker_ok(&["rm", name]);
    }
    eprintln!("e2e:   3 containers (java, python, go): 9 JSON lines and 3 traces, as 12 documents; docker logs exact");
}

/// The README's recipe for the common case ("Ship with a user and password"), taken from
/// README.md and run as written with bash against this engine and an Elasticsearch that refuses
/// any other credentials: the container's line arrives. Then `make install` runs again over the
/// plugin and the settings survive it (a line still arrives), and `make install` with the
/// settings as make variables (empty) clears them, which also leaves the engine as other
/// scenarios expect it.
fn readme_recipe_ships_with_a_password_and_reinstall_keeps_it(docker: &Docker) {
    const HELLO: &str = "hello from es-logging-plugin";
    let recipe = readme_block("ship-with-password");
    let (user, password) = ("docker-logs", "e2e recipe pa$$word, with spaces");
    let server = EsServer::start_blocking(ServerOptions {
        auth: Some(Auth::Basic {
            user: user.into(),
            password: password.into(),
        }),
        ..Default::default()
    });
    let _clear = ClearSettings(docker);
    // The recipe runs `busybox` as users have it; here that is the image the tests import.
    docker.docker_ok(&["tag", IMAGE, "busybox"]);
    // The engine disables a plugin only when no container uses it (the recipe says so).
    docker.remove_all_containers();
    let mut bash = std::process::Command::new("bash");
    bash.args(["-euo", "pipefail", "-c", &recipe])
        .env("ES_HOSTS", server.url())
        .env("ES_USER", user)
        .env("ES_PASSWORD", password);
    docker.client_env(&mut bash);
    let out = run_with_timeout(&mut bash, secs(180)).unwrap_or_else(|e| panic!("the recipe: {e}"));
    assert!(
        out.success(),
        "the README recipe failed ({}):\n{}\n{}\n--- the recipe ---\n{recipe}",
        out.status,
        tail_lines(&out.stdout, 20),
        tail_lines(&out.stderr, 20)
    );
    let arrived = |message: &str| {
        server
            .docs()
            .iter()
            .filter(|d| d.index == "logs-docker-default" && d.source["message"] == message)
            .count()
    };
    wait_for(secs(60), "the recipe's line in Elasticsearch", || {
        (arrived(HELLO) > 0).then_some(())
    });
    assert_eq!(arrived(HELLO), 1, "the recipe's line, once");
    assert_eq!(
        server.stats().auth_failures,
        0,
        "requests without the credentials"
    );

    // Again over the installed plugin: the settings the recipe made are kept.
    let out = docker.reinstall_with_make(&[]);
    eprintln!("e2e:   make install again:\n{}", tail_lines(&out.stdout, 6));
    let env = docker.docker_ok(&["plugin", "inspect", "-f", "{{json .Settings.Env}}", DRIVER]);
    let env: Vec<String> = serde_json::from_str(&env).expect("Settings.Env is a JSON list");
    for setting in [
        format!("ES_HOSTS={}", server.url()),
        format!("ES_USER={user}"),
        format!("ES_PASSWORD={password}"),
    ] {
        assert!(
            env.contains(&setting),
            "{setting:?} not kept by make install: {env:?}"
        );
    }
    assert!(
        out.stdout
            .contains("kept from the old install: ES_HOSTS ES_USER ES_PASSWORD"),
        "make install names what it kept:\n{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(password) && !out.stderr.contains(password),
        "make install printed the password"
    );
    let after = "after make install";
    let run = docker.docker(&[
        "run",
        "--rm",
        "--log-driver",
        DRIVER,
        "busybox",
        "echo",
        after,
    ]);
    assert!(
        run.success(),
        "docker run after make install: {}",
        run.stderr
    );
    wait_for(secs(60), "a line shipped after make install", || {
        (arrived(after) == 1).then_some(())
    });
    assert_eq!(
        server.stats().auth_failures,
        0,
        "requests without the credentials"
    );

    // The make-variable form: given empty, they clear the settings.
    docker.reinstall_with_make(&["ES_HOSTS=", "ES_USER=", "ES_PASSWORD="]);
    let env = docker.docker_ok(&["plugin", "inspect", "-f", "{{json .Settings.Env}}", DRIVER]);
    let env: Vec<String> = serde_json::from_str(&env).expect("Settings.Env is a JSON list");
    for setting in ["ES_HOSTS=", "ES_USER=", "ES_PASSWORD="] {
        assert!(
            env.iter().any(|e| e == setting),
            "{setting:?} after make install {setting}: {env:?}"
        );
    }
    docker.docker_ok(&["rmi", "busybox"]);
}

/// Puts the plugin back to shipping nowhere when a scenario that pointed it at a server ends,
/// whether it passed or not, so the scenarios after it do not ship to a server that is gone.
struct ClearSettings<'a>(&'a Docker);

impl Drop for ClearSettings<'_> {
    // Never panics (it may run while the scenario's panic unwinds): every step is tried, and
    // what fails shows in the next scenario.
    fn drop(&mut self) {
        let docker = self.0;
        let run = |args: &[&str]| run_with_timeout(&mut docker.command(args), secs(60)).ok();
        let cleared = run(&["plugin", "inspect", "-f", "{{json .Settings.Env}}", DRIVER])
            .is_some_and(|env| {
                ["ES_HOSTS=", "ES_USER=", "ES_PASSWORD="]
                    .iter()
                    .all(|s| env.stdout.contains(&format!("\"{s}\"")))
            });
        if cleared {
            return;
        }
        if let Some(ids) = run(&["ps", "-aq"]) {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.stdout.split_whitespace());
            if args.len() > 2 {
                run(&args);
            }
        }
        run(&["plugin", "disable", DRIVER]);
        run(&[
            "plugin",
            "set",
            DRIVER,
            "ES_HOSTS=",
            "ES_USER=",
            "ES_PASSWORD=",
        ]);
        run(&["plugin", "enable", "--timeout", "0", DRIVER]);
    }
}

/// The fenced block of README.md between `<!-- recipe: NAME -->` and `<!-- /recipe -->`.
fn readme_block(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let start = format!("<!-- recipe: {name} -->");
    let section = readme
        .split_once(&start)
        .and_then(|(_, rest)| rest.split_once("<!-- /recipe -->"))
        .map(|(section, _)| section)
        .unwrap_or_else(|| panic!("README.md has no {start} ... <!-- /recipe --> section"));
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .unwrap_or_else(|| panic!("the README's {name} recipe has no ```sh block"));
    block.to_owned()
}

/// The whole path on real things: containers of the real engine log through the installed
/// plugin into a real three-node OpenSearch cluster (`hosts` names all three; replicas 1), and
/// `docker logs` and the index agree line for line, each line once.
fn containers_ship_to_a_real_opensearch_cluster(docker: &Docker) {
    let homes = tempfile::tempdir().expect("cluster homes");
    let cluster = Cluster::start(homes.path());
    let index = "logs-docker-default";
    cluster.nodes[0].install_logs_template(1);
    cluster.create_data_stream(index);
    let node = &cluster.nodes[0];
    let hosts = format!("hosts={}", cluster.hosts());
    let names = ["e2e-os-a", "e2e-os-b"];
    for (n, name) in names.iter().enumerate() {
        // Lines that name their container and stream (busybox:local has no sed).
        let script = format!(
            "seq 1 15000 | while read i; do echo \"{n} out $i\"; done; \
             seq 1 500 | while read i; do echo \"{n} err $i\" >&2; done; echo {n} done"
        );
        docker.run_logged(name, &[&hosts], &script);
    }
    for name in names {
        assert_eq!(docker.wait_exit(name, secs(120)), 0, "{name} exit code");
    }
    let want = 2 * 15_501;
    let t = Instant::now();
    wait_for(secs(180), "every line in the OpenSearch cluster", || {
        (node.client().count(index) >= want).then_some(())
    });
    eprintln!(
        "e2e:   {want} lines in the 3-node OpenSearch cluster {:.1?} after the containers exited",
        t.elapsed()
    );
    std::thread::sleep(secs(2));
    let docs = node.scan(index);
    let ids: std::collections::HashSet<&str> = docs.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), docs.len(), "an _id indexed twice");
    let mut indexed: Vec<&str> = docs.iter().map(|(_, message)| message.as_str()).collect();
    let mut shown = Vec::new();
    for name in names {
        let logs = docker.logs(name, &[]);
        assert!(logs.success(), "docker logs {name}");
        shown.extend(logs.stdout.lines().map(str::to_owned));
        shown.extend(logs.stderr.lines().map(str::to_owned));
    }
    assert_eq!(shown.len(), want, "docker logs shows every line");
    let mut shown: Vec<&str> = shown.iter().map(String::as_str).collect();
    indexed.sort_unstable();
    shown.sort_unstable();
    assert_eq!(
        indexed.len(),
        shown.len(),
        "documents vs lines docker logs shows"
    );
    if let Some(k) = (0..shown.len()).find(|&k| indexed[k] != shown[k]) {
        panic!(
            "docker logs and the index differ at line {k}: {:?} vs {:?}",
            shown[k], indexed[k]
        );
    }
    for name in names {
        docker.docker_ok(&["rm", name]);
    }
}

/// True if some file under `dir` whose path mentions `container_id` starts with the gzip magic.
fn gzip_files_mentioning(dir: &std::path::Path, container_id: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            return gzip_files_mentioning(&path, container_id);
        }
        path.to_string_lossy().contains(container_id)
            && std::fs::read(&path).is_ok_and(|b| b.starts_with(&[0x1f, 0x8b]))
    })
}

/// `docker logs --since/--until` take Unix seconds with a fraction.
fn unix_arg(nanos: i128) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

/// Unix nanoseconds of an RFC 3339 UTC time as `docker logs --timestamps` prints it
/// (`2024-05-01T12:34:56.123456789Z`, fraction of any length).
fn parse_rfc3339_nanos(ts: &str) -> i128 {
    fn bad(ts: &str) -> ! {
        panic!("not an RFC 3339 UTC timestamp: {ts:?}")
    }
    let number = |p: &str| -> i64 { p.parse().unwrap_or_else(|_| bad(ts)) };
    let body = ts.strip_suffix('Z').unwrap_or_else(|| bad(ts));
    let (date, time) = body.split_once('T').unwrap_or_else(|| bad(ts));
    let d: Vec<i64> = date.split('-').map(number).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<i64> = hms.split(':').map(number).collect();
    if d.len() != 3 || t.len() != 3 || frac.len() > 9 {
        bad(ts);
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        number(&format!("{frac:0<9}"))
    };
    let days = days_from_civil(d[0], d[1], d[2]);
    let seconds = days * 86_400 + t[0] * 3_600 + t[1] * 60 + t[2];
    seconds as i128 * 1_000_000_000 + nanos as i128
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[test]
fn rfc3339_parsing_matches_known_instants() {
    assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), 0);
    assert_eq!(
        parse_rfc3339_nanos("2024-02-29T12:00:01.5Z"),
        1_709_208_001_500_000_000
    );
    assert_eq!(
        parse_rfc3339_nanos("2026-11-22T04:25:25.150115638Z"),
        1_795_321_525_150_115_638
    );
    assert_eq!(unix_arg(1_709_208_001_500_000_000), "1709208001.500000000");
}
