//! Scenarios run in sequence on one engine (starting an engine costs more than any scenario),
//! each under `catch_unwind`, every failure reported at the end; and the text comparisons they
//! share. `E2E_ONLY=name,name` runs a subset.
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Child;
use std::time::{Duration, Instant};

use super::docker::Docker;

/// Starts a private engine with the plugin installed and runs the scenarios on it (see
/// [`run_all`]).
pub fn run_on_new_engine<F>(scenarios: &[(&str, F)], run_one: impl Fn(&mut Docker, &F)) {
    let started = Instant::now();
    let mut docker = Docker::start();
    eprintln!("e2e: engine and plugin ready in {:.1?}", started.elapsed());
    run_all(&mut docker, scenarios, run_one);
}

/// Runs every scenario `E2E_ONLY` selects (all when unset) in order, as `run_one(docker,
/// scenario)`; panics (with the engine's log tail, keeping its files) naming every scenario that
/// failed.
pub fn run_all<F>(docker: &mut Docker, scenarios: &[(&str, F)], run_one: impl Fn(&mut Docker, &F)) {
    let only: Option<Vec<String>> = std::env::var("E2E_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    if let Some(only) = &only {
        for name in only {
            assert!(
                scenarios.iter().any(|(n, _)| n == name),
                "E2E_ONLY names unknown scenario {name:?}"
            );
        }
    }
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (name, scenario) in scenarios {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == name)) {
            continue;
        }
        ran += 1;
        let t = Instant::now();
        eprintln!("e2e: {name} ...");
        match catch_unwind(AssertUnwindSafe(|| run_one(docker, scenario))) {
            Ok(()) => eprintln!("e2e: {name} ok ({:.1?})", t.elapsed()),
            Err(panic) => {
                eprintln!("e2e: {name} FAILED ({:.1?})", t.elapsed());
                failures.push(format!("{name}: {}", panic_message(panic.as_ref())));
            }
        }
    }
    eprintln!("e2e: {ran} scenarios in {:.1?}", started.elapsed());
    if !failures.is_empty() {
        docker.keep_files();
        docker.fail(&format!(
            "{} of {ran} end-to-end scenarios failed:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        ));
    }
}

/// What a caught panic said.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".to_string())
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// "a\nb\n..." for every number in `range`.
pub fn numbers(range: std::ops::RangeInclusive<u64>) -> String {
    let mut s = String::new();
    for n in range {
        s.push_str(&n.to_string());
        s.push('\n');
    }
    s
}

/// `text` must be exactly the lines `first..=last`; the failure names the first difference.
pub fn assert_numbers(text: &str, first: u64, last: u64, what: &str) {
    let expected = numbers(first..=last);
    if text != expected {
        panic!("{what}: {}", first_difference(text, &expected));
    }
}

pub fn first_difference(actual: &str, expected: &str) -> String {
    let a: Vec<&str> = actual.lines().collect();
    let e: Vec<&str> = expected.lines().collect();
    let at = a
        .iter()
        .zip(&e)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(e.len()));
    format!(
        "{} lines, expected {}; first difference at line {}: got {:?}, expected {:?}{}",
        a.len(),
        e.len(),
        at + 1,
        a.get(at),
        e.get(at),
        if actual.ends_with('\n') || actual.is_empty() {
            ""
        } else {
            " (no final newline)"
        }
    )
}

/// Waits for `child` to exit by itself for up to `timeout`; kills it otherwise.
pub fn wait_child(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}
