//! What a test needs beyond a Rust toolchain (root, osmem-server, Java with Maven), checked before
//! it starts, so a missing piece is named with the make target that provides it instead of
//! surfacing as a panic deep inside the test.
//!
//! Under `make test` (which sets `ESLP_REQUIRE_ALL=1`) and in CI (`CI=true`, as `.ci/run` sets it)
//! a missing prerequisite fails the test: there nothing may be skipped. Under a plain
//! `cargo test` the test is skipped instead, with a line on stderr, written past the test
//! harness's capture so it shows: `skipped: <test> needs root (...)`. The harness still counts
//! the test as passed; the line is the record.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The hint every skip line ends with.
const QUICK: &str = "or `make quick` for the tests that need nothing";

/// Whether a missing prerequisite is a failure (CI, `make test`) rather than a skip.
pub fn required() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    set("ESLP_REQUIRE_ALL") || set("CI")
}

/// True when nothing is `missing` (what, and where to get it); else fails or skips `test`.
fn decide(test: &str, missing: Option<String>) -> bool {
    let Some(missing) = missing else {
        return true;
    };
    if required() {
        panic!(
            "{test} needs {missing}; ESLP_REQUIRE_ALL or CI is set, so it fails rather than skips"
        );
    }
    // Straight to the stream: the print macros are captured by the test harness.
    let _ = writeln!(std::io::stderr(), "skipped: {test} needs {missing}");
    false
}

/// True when the process runs as root; otherwise fails or skips (see the module docs).
pub fn root(test: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    decide(
        test,
        (euid != 0).then(|| format!("root, {why} (run `sudo make test`, {QUICK})")),
    )
}

/// The osmem-server binary `OSMEM_SERVER` names (`make quick` and `make test` fetch it into
/// target/tools and set it), or `None` after failing or skipping.
pub fn osmem_server(test: &str) -> Option<PathBuf> {
    let binary = std::env::var_os("OSMEM_SERVER").map(PathBuf::from);
    let missing = match &binary {
        None => Some("osmem-server, named by OSMEM_SERVER".to_owned()),
        Some(path) if !path.is_file() => Some(format!(
            "osmem-server, but OSMEM_SERVER names {}, which is no file",
            path.display()
        )),
        Some(_) => None,
    }
    .map(|m| format!("{m} (run `make quick` or `make test`: they fetch it into target/tools)"));
    decide(test, missing).then(|| binary.expect("checked"))
}

/// True when Java and Maven are there for `tools/opensearch/run-node` (JAVA_HOME, else Debian's
/// JDK 17, else `java` on PATH; `mvn`, or MVN); otherwise fails or skips.
pub fn java_and_maven(test: &str) -> bool {
    let java = std::env::var_os("JAVA_HOME")
        .map(|home| Path::new(&home).join("bin/java"))
        .filter(|java| java.is_file())
        .or_else(|| {
            std::fs::read_dir("/usr/lib/jvm").ok().and_then(|dirs| {
                dirs.filter_map(|d| Some(d.ok()?.path().join("bin/java")))
                    .find(|java| {
                        java.is_file()
                            && java
                                .to_string_lossy()
                                .starts_with("/usr/lib/jvm/java-17-openjdk-")
                    })
            })
        })
        .or_else(|| on_path("java"));
    let mvn = std::env::var_os("MVN")
        .map(PathBuf::from)
        .or_else(|| on_path("mvn"));
    let missing: Vec<&str> = [(java.is_none(), "java (17)"), (mvn.is_none(), "mvn")]
        .into_iter()
        .filter_map(|(gone, what)| gone.then_some(what))
        .collect();
    decide(
        test,
        (!missing.is_empty()).then(|| {
            format!(
                "{} for the real OpenSearch nodes (apt-get install openjdk-17-jdk-headless \
                 maven, then `make opensearch`; {QUICK})",
                missing.join(" and ")
            )
        }),
    )
}

fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}
