//! Which Docker Engine the end-to-end tests run against, and the second one: Docker 26.1 from
//! Debian 13 (trixie), beside the host's 20.10 from Debian 12.
//!
//! `ESLP_ENGINE` selects it: `host` (the default) is the `dockerd` on PATH; `trixie` is
//! trixie's docker.io, from a root tree built once into `target/trixie` by
//! `tests/support/trixie-tree` (debootstrap). That engine runs in a private mount namespace
//! whose root is the tree (`tests/support/trixie-ns`, held by one process for the whole test),
//! with the run folder bound in at its own path: the data-root, the socket and the plugin's
//! state folder have the same paths for the engine as for the test, and the host's docker CLI
//! (API 1.41 and up) talks to it through the socket. Nothing it mounts reaches the host; the
//! namespace ends with its last process, which [`Namespace::stop`] (and the engine's teardown)
//! kill by pid.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::docker::{run_with_timeout, stop_child, stop_with_test_process, tail_lines, which};

/// debootstrap of the tree took 55 s here; a slow mirror may take several minutes.
const TREE_BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The namespace is a handful of mounts and a pivot_root.
const NAMESPACE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The engine under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The `dockerd` on PATH (Debian 12's docker.io 20.10 on CI).
    Host,
    /// Debian 13's docker.io 26.1, in a private mount namespace.
    Trixie,
}

impl Engine {
    /// `ESLP_ENGINE`, `host` when unset; any other value is a failure, never a silent default.
    pub fn from_env() -> Engine {
        match std::env::var("ESLP_ENGINE").as_deref() {
            Err(std::env::VarError::NotPresent) | Ok("") | Ok("host") => Engine::Host,
            Ok("trixie") => Engine::Trixie,
            Ok(other) => panic!("ESLP_ENGINE={other:?}: use `host` (the default) or `trixie`"),
            Err(e) => panic!("ESLP_ENGINE: {e}"),
        }
    }
}

/// The mount namespace rooted in the trixie tree, held by `tests/support/trixie-ns`.
pub struct Namespace {
    holder: Child,
}

impl Namespace {
    /// Builds the tree if it is missing or incomplete, then starts the namespace with `run`
    /// bound in; panics saying what is missing or what failed.
    pub fn start(target_dir: &Path, run: &Path) -> Namespace {
        for tool in ["unshare", "nsenter", "pivot_root"] {
            if which(tool).is_none() {
                panic!("e2e: `{tool}` is not in PATH; ESLP_ENGINE=trixie needs it: apt-get install util-linux");
            }
        }
        let tree = build_tree(target_dir);
        let ready = run.join("trixie-ns.ready");
        let log_path = run.join("trixie-ns.log");
        let log = fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--"])
            .arg(support_script("trixie-ns"))
            .arg(&tree)
            .arg(run)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        stop_with_test_process(&mut cmd);
        let mut holder = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unshare: {e}"));
        let deadline = Instant::now() + NAMESPACE_START_TIMEOUT;
        while !ready.exists() {
            let exited = holder.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                stop_child(&mut holder, "trixie-ns", Duration::from_secs(5));
                panic!(
                    "e2e: the trixie engine's mount namespace did not start ({}); {}:\n{}",
                    exited.map_or("timed out".to_string(), |s| s.to_string()),
                    log_path.display(),
                    tail_lines(&fs::read_to_string(&log_path).unwrap_or_default(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Namespace { holder }
    }

    /// `program` (a path inside the tree) run inside the namespace: nsenter enters it and its
    /// root, then execs the program, which keeps nsenter's pid (no fork without a pid
    /// namespace), so signals to the child reach the program itself.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        // dockerd finds containerd and runc on PATH: the tree's, not what the test's PATH adds.
        cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(["--mount", "--root", "--wd", "--target"])
            .arg(self.holder.id().to_string())
            .arg("--")
            .arg(program);
        cmd
    }

    /// Ends the namespace by killing its holder (every process in it is stopped first by the
    /// caller); the kernel unmounts everything in it with the last process.
    pub fn stop(&mut self) {
        stop_child(&mut self.holder, "trixie-ns", Duration::from_secs(5));
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `target/trixie`, built by `tests/support/trixie-tree` unless it is complete already.
fn build_tree(target_dir: &Path) -> PathBuf {
    let tree = target_dir.join("trixie");
    let started = Instant::now();
    let out = run_with_timeout(
        Command::new(support_script("trixie-tree")).arg(&tree),
        TREE_BUILD_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("e2e: tests/support/trixie-tree: {e}"));
    assert!(
        out.success(),
        "e2e: tests/support/trixie-tree {} failed ({}):\n{}",
        tree.display(),
        out.status,
        tail_lines(&out.stderr, 40)
    );
    if !out.stderr.is_empty() {
        eprint!("{}", out.stderr);
        eprintln!("e2e: trixie tree ready in {:.1?}", started.elapsed());
    }
    tree
}

fn support_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}
