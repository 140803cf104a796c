//! A private, throwaway Docker Engine with the plugin installed the way users install it.
//!
//! [`Docker::start`] sets up, in order:
//! 1. a `dockerd` with its own data-root, exec-root, socket and pidfile under
//!    `target/e2e/run-XXXX`, no bridge and no firewall changes, and its own containerd
//!    namespaces (so it cannot touch another engine's containers even if it shares a system
//!    containerd);
//! 2. `busybox:local`, imported from the static busybox of Debian's busybox-static;
//! 3. a `docker-registry` on a free loopback port (the engine treats `localhost:<any port>` as an
//!    insecure registry);
//! 4. the plugin folder built by `make rootfs` (release build), created, pushed to that registry,
//!    removed, and installed back with `docker plugin install --grant-all-permissions` with its
//!    state dir (`state.source`) in the run folder, under the alias [`DRIVER`].
//!
//! Dropping [`Docker`] removes every container, stops dockerd and the registry by pid (waiting for
//! them to exit), kills any process left in its containerd namespaces, and unmounts leftovers
//! under the run folder. The run folder is removed unless a test called [`Docker::keep_files`].
//!
//! A missing tool or a non-root user is a failure with a message saying what to install, never a
//! skip: the end-to-end tests are required wherever they are asked to run.
//!
//! `ESLP_ENGINE=trixie` runs all of this against Debian 13's Docker 26.1 instead of the host's
//! `dockerd` (see `support/trixie.rs`); the tests see the same paths either way.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::trixie::{Engine, Namespace};

/// The name containers use: `--log-driver es-logging-plugin` (installed with `--alias`, the
/// engine resolves it to `es-logging-plugin:latest`, as after `make install`).
pub const DRIVER: &str = "es-logging-plugin";
/// The image every test container runs.
pub const IMAGE: &str = "busybox:local";
/// Default bound for one docker CLI command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Applets linked into busybox:local (the scenarios use only these).
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "yes", "head", "seq", "sleep", "printf", "date", "true", "false",
];
/// dockerd starts in 2-6 s on an idle machine; leave room for a loaded CI machine.
const DOCKERD_START_TIMEOUT: Duration = Duration::from_secs(90);
/// dockerd stops containers (10 s grace each, in parallel) and plugins on SIGTERM.
const DOCKERD_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// A cold release build with thin LTO on a 2-core machine takes several minutes.
const ROOTFS_BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// The result of one command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs `cmd` with no stdin and captured output; kills it after `timeout`.
/// `Err` carries what it printed until then.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let stdout = read_in_background(child.stdout.take().expect("piped stdout"));
    let stderr = read_in_background(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{cmd:?} did not finish within {timeout:?} (killed)\nstdout: {}\nstderr: {}",
            tail_lines(&stdout, 20),
            tail_lines(&stderr, 20)
        )),
    }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The engine, its registry and the installed plugin. See the module docs.
pub struct Docker {
    /// `target/e2e/run-XXXX`: everything this engine writes.
    root: tempfile::TempDir,
    host: String,
    dockerd: Option<Child>,
    /// Flags beyond the fixed ones (`--live-restore`), kept across [`Docker::restart_dockerd`].
    dockerd_flags: Vec<String>,
    registry: Option<Child>,
    /// containerd namespaces of this engine's containers and plugins (unique per run).
    namespace: String,
    plugins_namespace: String,
    /// Changes when the plugin is installed again ([`Docker::reinstall_with_make`]).
    plugin_id: Mutex<String>,
    state_dir: PathBuf,
    registry_port: u16,
    keep: AtomicBool,
    engine: Engine,
    /// The mount namespace the trixie engine runs in; `None` for the host engine.
    trixie: Option<Namespace>,
}

impl Docker {
    /// Starts everything and installs the plugin; panics (with the dockerd log tail) on failure,
    /// after tearing down what it had started. Call it on the thread that will drop it: the
    /// engine is also stopped when that thread dies.
    pub fn start() -> Docker {
        let engine = Engine::from_env();
        preflight(engine);
        let e2e_dir = target_dir().join("e2e");
        fs::create_dir_all(&e2e_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", e2e_dir.display()));
        let root = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&e2e_dir)
            .unwrap_or_else(|e| panic!("create a run folder in {}: {e}", e2e_dir.display()));
        let unique = root
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 run folder name")
            .trim_start_matches("run-")
            .to_lowercase();
        let mut docker = Docker {
            host: format!("unix://{}", root.path().join("docker.sock").display()),
            state_dir: root.path().join("plugin-state"),
            root,
            dockerd: None,
            dockerd_flags: Vec::new(),
            registry: None,
            namespace: format!("esl-e2e-{unique}"),
            plugins_namespace: format!("esl-e2e-{unique}-plugins"),
            plugin_id: Mutex::new(String::new()),
            registry_port: 0,
            keep: AtomicBool::new(false),
            engine,
            trixie: None,
        };
        eprintln!(
            "e2e: private engine ({engine:?}) in {}",
            docker.root.path().display()
        );
        if engine == Engine::Trixie {
            docker.trixie = Some(Namespace::start(&target_dir(), docker.root.path()));
        }
        docker.start_dockerd();
        eprintln!(
            "e2e: engine {engine:?}: {}",
            docker.docker_ok(&[
                "version",
                "-f",
                "dockerd {{.Server.Version}} (API {{.Server.APIVersion}}), client {{.Client.Version}}"
            ])
        );
        docker.import_busybox();
        docker.registry_port = docker.start_registry();
        docker.install_plugin(docker.registry_port);
        docker
    }

    /// Which engine this is (`ESLP_ENGINE`).
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// `DOCKER_HOST` of this engine.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host folder mounted as the plugin's state dir (`state.source`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The installed plugin's id (`docker plugin inspect -f {{.Id}}`).
    pub fn plugin_id(&self) -> String {
        self.plugin_id.lock().expect("plugin id").clone()
    }

    /// The loopback registry's port: `localhost:<port>/name:tag` pushes and pulls there.
    pub fn registry_port(&self) -> u16 {
        self.registry_port
    }

    /// The plugin folder (config.json and rootfs/) the installed plugin was created from.
    pub fn plugin_dir(&self) -> PathBuf {
        self.root.path().join("plugin")
    }

    /// Stops dockerd (SIGTERM, waiting for it to exit) and starts it again on the same folders
    /// and socket with `flags` added (e.g. `--live-restore`), which later restarts keep.
    /// Without live-restore the engine stops every container and the plugin on the way down.
    pub fn restart_dockerd(&mut self, flags: &[&str]) {
        self.stop_dockerd();
        self.dockerd_flags = flags.iter().map(|f| f.to_string()).collect();
        self.start_dockerd();
    }

    /// Stops dockerd and waits for it to exit; [`Docker::restart_dockerd`] starts it again.
    pub fn stop_dockerd(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            stop_child(&mut dockerd, "dockerd", DOCKERD_STOP_TIMEOUT);
        }
    }

    /// Starts dockerd again after [`Docker::stop_dockerd`], with the flags it had.
    pub fn start_dockerd_again(&mut self) {
        assert!(self.dockerd.is_none(), "dockerd is already running");
        self.start_dockerd();
    }

    /// Keep the run folder (logs, data-root, plugin state) after the engine stops, and say where.
    pub fn keep_files(&self) {
        self.keep.store(true, Ordering::SeqCst);
    }

    /// A docker CLI command for this engine, isolated from the user's docker config and context.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.args(args);
        self.client_env(&mut cmd);
        cmd
    }

    /// Points every docker CLI that `cmd` runs (a script, `make install`) at this engine, with
    /// none of the user's docker config or context.
    pub fn client_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.root.path().join("client-config"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
    }

    /// Runs `make install` against this engine as a user would run it again over the installed
    /// plugin, from this engine's plugin folder, with `vars` (`NAME=value`) on its command line;
    /// the plugin gets a new id, which [`Docker::plugin_id`] then gives. Fails unless make does.
    pub fn reinstall_with_make(&self, vars: &[&str]) -> Output {
        let mut make = Command::new("make");
        make.current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("install")
            .arg(format!("PLUGIN_DIR={}", self.plugin_dir().display()))
            .arg(format!("TARGET_DIR={}", target_dir().display()))
            .arg(format!("DOCKER_HOST={}", self.host))
            .args(vars)
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL");
        self.client_env(&mut make);
        let out = run_with_timeout(&mut make, ROOTFS_BUILD_TIMEOUT)
            .unwrap_or_else(|e| panic!("make install: {e}"));
        if !out.success() {
            self.fail(&format!(
                "make install failed:\n{}\n{}",
                tail_lines(&out.stdout, 30),
                tail_lines(&out.stderr, 30)
            ));
        }
        let plugin_id = self.docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", DRIVER]);
        *self.plugin_id.lock().expect("plugin id") = plugin_id;
        out
    }

    /// Runs a docker CLI command (bounded by [`COMMAND_TIMEOUT`]) and returns whatever it did.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_within(args, COMMAND_TIMEOUT)
    }

    /// Runs a docker CLI command bounded by `timeout`; a timeout is a failure.
    pub fn docker_within(&self, args: &[&str], timeout: Duration) -> Output {
        run_with_timeout(&mut self.command(args), timeout)
            .unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
    }

    /// Runs a docker CLI command that must succeed; returns its trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if !out.success() {
            panic!(
                "docker {} failed ({}):\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                tail_lines(&out.stdout, 20),
                tail_lines(&out.stderr, 20)
            );
        }
        out.stdout.trim().to_string()
    }

    /// Starts a detached container named `name` that logs through the plugin and runs
    /// `sh -c script` in busybox:local with no network; returns its id.
    pub fn run_logged(&self, name: &str, log_opts: &[&str], script: &str) -> String {
        self.run_logged_with(name, &[], log_opts, script)
    }

    /// [`Docker::run_logged`] with more `docker run` arguments (`--label`, `-e`...).
    pub fn run_logged_with(
        &self,
        name: &str,
        run_args: &[&str],
        log_opts: &[&str],
        script: &str,
    ) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--network", "none"];
        args.extend(run_args);
        args.extend(["--log-driver", DRIVER]);
        for opt in log_opts {
            args.extend(["--log-opt", opt]);
        }
        args.extend([IMAGE, "sh", "-c", script]);
        self.docker_ok(&args)
    }

    /// Waits for container `name` to exit and returns its exit code.
    pub fn wait_exit(&self, name: &str, timeout: Duration) -> i32 {
        let out = run_with_timeout(&mut self.command(&["wait", name]), timeout)
            .unwrap_or_else(|e| panic!("container {name} did not exit: {e}"));
        assert!(out.success(), "docker wait {name}: {}", out.stderr.trim());
        out.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("docker wait {name} printed {:?}", out.stdout))
    }

    /// `docker logs [args] name`, which must succeed.
    pub fn logs(&self, name: &str, args: &[&str]) -> Output {
        let mut all = vec!["logs"];
        all.extend_from_slice(args);
        all.push(name);
        let out = self.docker(&all);
        assert!(
            out.success(),
            "docker {} failed: {}",
            all.join(" "),
            out.stderr.trim()
        );
        out
    }

    /// Removes every container of this engine (`docker rm -f`).
    pub fn remove_all_containers(&self) {
        let leftover = self.docker_ok(&["ps", "-aq"]);
        if !leftover.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(leftover.split_whitespace());
            self.docker_ok(&args);
        }
    }

    /// Changes plugin settings (`docker plugin set`): the engine takes them only while the
    /// plugin is disabled, and disables it only when no container uses it, so every container
    /// is removed first.
    pub fn set_plugin(&self, settings: &[&str]) {
        self.remove_all_containers();
        self.docker_ok(&["plugin", "disable", DRIVER]);
        let mut args = vec!["plugin", "set", DRIVER];
        args.extend_from_slice(settings);
        self.docker_ok(&args);
        self.docker_ok(&["plugin", "enable", DRIVER]);
    }

    /// Waits until the plugin's events collector has started (EVENTS=true), and a moment more:
    /// it connects right after, and an event before that is not its to see.
    pub fn wait_events_collector(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .dockerd_log()
            .contains("collecting the engine's events")
        {
            if Instant::now() > deadline {
                self.fail("the events collector did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
    }

    /// Starts `docker logs -f name` with its stdout piped (stderr discarded).
    pub fn spawn_follow(&self, name: &str) -> Child {
        self.command(&["logs", "-f", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker logs -f")
    }

    /// The engine's log so far (the plugin's stdout lands here, tagged `plugin=<id>`).
    pub fn dockerd_log(&self) -> String {
        fs::read(self.root.path().join("dockerd.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The pid of the running plugin process (`es-logging-plugin serve`, the child of the
    /// containerd shim that runs this engine's plugin), if it is running.
    pub fn plugin_pid(&self) -> Option<u32> {
        let plugin_id = self.plugin_id();
        let shims: Vec<u32> = processes()
            .into_iter()
            .filter(|p| {
                arg_after(&p.args, "-namespace") == Some(self.plugins_namespace.as_str())
                    && arg_after(&p.args, "-id") == Some(plugin_id.as_str())
            })
            .map(|p| p.pid)
            .collect();
        processes()
            .into_iter()
            .find(|p| {
                shims.contains(&p.ppid)
                    && p.args.iter().any(|a| a.ends_with("es-logging-plugin"))
                    && p.args.iter().any(|a| a == "serve")
            })
            .map(|p| p.pid)
    }

    /// Panics with `message` and the tail of the dockerd log.
    pub fn fail(&self, message: &str) -> ! {
        panic!(
            "{message}\n--- last 60 lines of {} ---\n{}",
            self.root.path().join("dockerd.log").display(),
            tail_lines(&self.dockerd_log(), 60)
        )
    }

    fn start_dockerd(&mut self) {
        let root = self.root.path().to_path_buf();
        // Appended to: a restarted engine's log follows the previous one's.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("dockerd.log"))
            .expect("open dockerd.log");
        let mut cmd = match &self.trixie {
            Some(namespace) => namespace.command("/usr/sbin/dockerd"),
            None => Command::new("dockerd"),
        };
        cmd.arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("-H")
            .arg(&self.host)
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ])
            .args(["--containerd-namespace", &self.namespace])
            .args(["--containerd-plugins-namespace", &self.plugins_namespace])
            .args(&self.dockerd_flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        stop_with_test_process(&mut cmd);
        self.dockerd = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start dockerd: {e}")),
        );
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .dockerd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.dockerd = None;
                self.fail(&format!("dockerd exited during startup ({status})"));
            }
            let up = run_with_timeout(&mut self.command(&["info"]), Duration::from_secs(10))
                .map(|o| o.success())
                .unwrap_or(false);
            if up {
                break;
            }
            if started.elapsed() > DOCKERD_START_TIMEOUT {
                self.fail(&format!(
                    "dockerd did not answer within {DOCKERD_START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("e2e: dockerd up in {:.1?}", started.elapsed());
    }

    fn import_busybox(&self) {
        let rootfs = self.root.path().join("busybox-rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).expect("create busybox rootfs");
        fs::copy(
            which("busybox").expect("busybox checked"),
            bin.join("busybox"),
        )
        .expect("copy busybox");
        for applet in BUSYBOX_APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("link applet");
        }
        let tar = self.root.path().join("busybox.tar");
        let out = run_with_timeout(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("tar: {e}"));
        assert!(out.success(), "tar busybox rootfs: {}", out.stderr);
        self.docker_ok(&["import", tar.to_str().expect("utf-8 path"), IMAGE]);
        let hello = self.docker_ok(&["run", "--rm", "--network", "none", IMAGE, "echo", "hello"]);
        if hello != "hello" {
            self.fail(&format!("busybox:local does not run: printed {hello:?}"));
        }
    }

    /// Starts docker-registry on a free loopback port and returns the port. The port is
    /// probed free, then bound by the registry: if another process takes it in between, the
    /// registry exits and another port is tried.
    fn start_registry(&mut self) -> u16 {
        let dir = self.root.path().join("registry");
        fs::create_dir_all(dir.join("data")).expect("create registry folder");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("probe a free loopback port")
                .port();
            let config = dir.join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.join("data").display()
                ),
            )
            .expect("write registry config");
            let log_path = dir.join("registry.log");
            let log = fs::File::create(&log_path).expect("create registry.log");
            let mut registry = Command::new("docker-registry");
            registry
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log);
            stop_with_test_process(&mut registry);
            let mut child = registry
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if registry_answers(port) {
                    self.registry = Some(child);
                    return port;
                }
                if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = fs::read_to_string(&log_path).unwrap_or_default();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!(
            "docker-registry did not start on a loopback port in 5 attempts; its log:\n{}",
            tail_lines(&last_log, 30)
        );
    }

    fn install_plugin(&mut self, port: u16) {
        let plugin_dir = self.root.path().join("plugin");
        eprintln!(
            "e2e: make rootfs (release build) into {}",
            plugin_dir.display()
        );
        let started = Instant::now();
        let mut make = Command::new("make");
        make.current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("rootfs")
            .arg(format!("PLUGIN_DIR={}", plugin_dir.display()))
            .arg(format!("TARGET_DIR={}", target_dir().display()))
            // Not a sub-make of whatever ran `cargo test`: its jobserver is not ours.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL");
        let out = run_with_timeout(&mut make, ROOTFS_BUILD_TIMEOUT)
            .unwrap_or_else(|e| panic!("make rootfs: {e}"));
        assert!(
            out.success(),
            "make rootfs failed:\n{}\n{}",
            tail_lines(&out.stdout, 30),
            tail_lines(&out.stderr, 60)
        );
        eprintln!("e2e: rootfs ready in {:.1?}", started.elapsed());

        // Through a registry, as users get it: create, push, remove, install.
        let reference = format!("localhost:{port}/es-logging-plugin:e2e");
        fs::create_dir_all(&self.state_dir).expect("create plugin state dir");
        self.docker_ok(&[
            "plugin",
            "create",
            &reference,
            plugin_dir.to_str().expect("utf-8"),
        ]);
        self.docker_ok(&["plugin", "push", &reference]);
        self.docker_ok(&["plugin", "rm", &reference]);
        let state = format!("state.source={}", self.state_dir.display());
        // This engine's socket, for the events collector (off until a scenario turns it on).
        let engine_socket = format!(
            "docker-socket.source={}",
            self.root.path().join("docker.sock").display()
        );
        let out = self.docker(&[
            "plugin",
            "install",
            "--grant-all-permissions",
            "--alias",
            DRIVER,
            &reference,
            &state,
            &engine_socket,
        ]);
        if !out.success() {
            self.fail(&format!(
                "docker plugin install {reference} failed:\n{}{}",
                out.stdout, out.stderr
            ));
        }
        let plugin_id = self.docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", DRIVER]);
        let enabled = self.docker_ok(&["plugin", "inspect", "-f", "{{.Enabled}}", DRIVER]);
        if enabled != "true" {
            self.fail(&format!("plugin installed but not enabled ({enabled})"));
        }
        eprintln!(
            "e2e: plugin {DRIVER} installed from {reference} (id {})",
            &plugin_id[..12.min(plugin_id.len())]
        );
        *self.plugin_id.lock().expect("plugin id") = plugin_id;
    }

    fn teardown(&mut self) {
        if let Some(mut dockerd) = self.dockerd.take() {
            if matches!(dockerd.try_wait(), Ok(None)) {
                // Removing the containers first makes shutdown quick and leaves no task behind.
                if let Ok(ids) =
                    run_with_timeout(&mut self.command(&["ps", "-aq"]), Duration::from_secs(30))
                {
                    let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
                    if !ids.is_empty() {
                        let mut args = vec!["rm", "-f"];
                        args.extend(ids);
                        let _ = run_with_timeout(&mut self.command(&args), Duration::from_secs(60));
                    }
                }
            }
            stop_child(&mut dockerd, "dockerd", DOCKERD_STOP_TIMEOUT);
        }
        if let Some(mut registry) = self.registry.take() {
            stop_child(&mut registry, "docker-registry", Duration::from_secs(10));
        }
        // The namespace and its mounts end with its last process: the holder now, then
        // whatever an engine that did not stop cleanly left in it.
        if let Some(mut namespace) = self.trixie.take() {
            namespace.stop();
        }
        self.kill_leftover_processes();
        unmount_under(self.root.path());
    }

    /// Kills what an engine that did not stop cleanly left: shims in this engine's containerd
    /// namespaces, their children, and anything started with a path in the run folder.
    fn kill_leftover_processes(&self) {
        let root = self.root.path().to_string_lossy().into_owned();
        let ours = |p: &Process| {
            let ns = arg_after(&p.args, "-namespace");
            ns == Some(self.namespace.as_str())
                || ns == Some(self.plugins_namespace.as_str())
                || p.args.iter().any(|a| a.contains(&root))
        };
        for _round in 0..3 {
            let all = processes();
            let mut victims: Vec<u32> = all.iter().filter(|p| ours(p)).map(|p| p.pid).collect();
            // Their descendants first would be tidier; SIGKILL to all at once is enough here.
            let mut i = 0;
            while i < victims.len() {
                let parent = victims[i];
                for p in &all {
                    if p.ppid == parent && !victims.contains(&p.pid) {
                        victims.push(p.pid);
                    }
                }
                i += 1;
            }
            if victims.is_empty() {
                return;
            }
            eprintln!("e2e: killing leftover processes {victims:?}");
            for pid in &victims {
                signal(*pid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.teardown();
        if self.keep.load(Ordering::SeqCst) || std::thread::panicking() {
            self.root.disable_cleanup(true);
            eprintln!("e2e: kept {} for inspection", self.root.path().display());
        }
    }
}

/// Fails (never skips) when the machine cannot run the end-to-end tests.
fn preflight(engine: Engine) {
    let install = "install them with: apt-get install docker.io busybox-static docker-registry \
                   (or run .ci/run as root, which does it)";
    for tool in [
        "docker",
        "dockerd",
        "docker-registry",
        "busybox",
        "tar",
        "make",
    ] {
        // The trixie engine brings its own dockerd (support/trixie.rs checks what it needs).
        if tool == "dockerd" && engine == Engine::Trixie {
            continue;
        }
        if which(tool).is_none() {
            panic!("e2e: `{tool}` is not in PATH. The end-to-end tests need a real Docker Engine; {install}");
        }
    }
    let busybox = which("busybox").expect("checked");
    // A dynamic busybox (Debian's `busybox` package) would not run in an image without libc.
    if let Ok(out) = run_with_timeout(Command::new("ldd").arg(&busybox), Duration::from_secs(10)) {
        if out.success() && out.stdout.contains("=>") {
            panic!(
                "e2e: {} is dynamically linked; {install}",
                busybox.display()
            );
        }
    }
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2));
    if euid != Some("0") {
        panic!("e2e: the end-to-end tests start their own dockerd and must run as root (euid {euid:?}): run `sudo make e2e`, or `make quick` for the tests that need nothing");
    }
}

/// The cargo target dir (integration tests get `target/tmp` as CARGO_TARGET_TMPDIR).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn registry_answers(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// Has the kernel send SIGTERM to the child when the thread that started it dies, so an
/// interrupted test run (Ctrl-C, a CI timeout's SIGKILL) never leaves an engine behind: dockerd
/// then shuts down as on any SIGTERM. Normally `Drop` stops the child first.
pub fn stop_with_test_process(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// SIGTERM, then SIGKILL after `grace`; always reaps the child.
pub fn stop_child(child: &mut Child, what: &str, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "e2e: {what} (pid {}) ignored SIGTERM for {grace:?}; killing it",
        child.id()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends a signal by pid (the `kill` utility keeps this free of unsafe code).
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Unmounts (lazily, deepest first) whatever is still mounted under `root`.
fn unmount_under(root: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let root = root.to_string_lossy();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(root.as_ref()))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        eprintln!("e2e: unmounting leftover {point}");
        let _ = Command::new("umount")
            .args(["--lazy", &point])
            .stdin(Stdio::null())
            .status();
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(digits) if bytes[i] == b'\\' => {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |v, d| v.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Process {
    pid: u32,
    ppid: u32,
    args: Vec<String>,
}

/// Every process visible in /proc, with its parent and arguments.
fn processes() -> Vec<Process> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let ppid = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(Process { pid, ppid, args })
        })
        .collect()
}

/// The argument that follows `flag` (`-namespace moby` style).
fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}
