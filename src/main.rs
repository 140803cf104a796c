//! The `es-logging-plugin` command: `serve` runs the plugin (the managed plugin's entrypoint).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use es_logging_plugin::{api, metrics, plugin::Plugin, retention, settings::Settings};

/// Docker logging plugin: a durable local copy for `docker logs`, shipped to Elasticsearch.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the logging-plugin API on a unix socket.
    Serve {
        /// Socket to listen on (the managed plugin's is under /run/docker/plugins).
        #[arg(
            long,
            env = "SOCKET",
            default_value = "/run/docker/plugins/es-logging.sock"
        )]
        socket: PathBuf,
        /// Where local copies, checkpoints and the run table live; a host mount in the managed
        /// plugin, so they survive restarts and upgrades.
        #[arg(long, env = "STATE_DIR", default_value = "/var/lib/es-logging-plugin")]
        state_dir: PathBuf,
    },
}

/// How long shutdown waits for pipelines to drain and streams to end before exiting; under the
/// engine's 10 s before SIGKILL.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(8);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { socket, state_dir } => {
            let settings = Settings::from_env()?;
            init_logging(&settings.log_level);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(settings, &socket, &state_dir))
        }
    }
}

fn init_logging(level: &str) {
    // Plugin stdout goes to the engine's log at info level, stderr at error: log to stdout.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "es_logging_plugin={level},warn"
        )))
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .init();
}

async fn serve(settings: Settings, socket: &Path, state_dir: &Path) -> anyhow::Result<()> {
    // Bind first: the engine disables a managed plugin that has no socket within seconds.
    let listener = bind(socket)?;
    create_private_dir(state_dir)?;
    let shutdown = CancellationToken::new();
    let plugin = Plugin::open(settings, state_dir, shutdown.clone())
        .with_context(|| format!("cannot open the state dir {}", state_dir.display()))?;
    tracing::info!(socket = %socket.display(), state_dir = %state_dir.display(), version = env!("CARGO_PKG_VERSION"), "es-logging-plugin serving");
    plugin.recover();
    let server = tokio::spawn(api::serve(
        listener,
        Arc::clone(&plugin),
        shutdown.clone(),
        SHUTDOWN_LIMIT,
    ));
    plugin
        .tracker()
        .spawn(retention::run(Arc::clone(&plugin), shutdown.clone()));
    if let Some(addr) = plugin.settings().metrics_addr {
        let metrics = Arc::clone(plugin.metrics());
        plugin
            .tracker()
            .spawn(metrics::serve(addr, metrics, shutdown.clone()));
    }

    wait_for_signal().await;
    tracing::info!("shutting down: draining FIFOs and ending streams");
    shutdown.cancel();
    plugin.wind_down(SHUTDOWN_LIMIT).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    let _ = std::fs::remove_file(socket);
    tracing::info!("stopped");
    Ok(())
}

fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A socket left by a killed predecessor would make bind fail.
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot remove the old socket {}", socket.display()))
        }
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    // Only the engine (root) talks to us.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", socket.display()))?;
    Ok(listener)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the state dir {}", dir.display()))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    // PID 1 in the plugin's namespace ignores signals without a handler: without this the
    // engine waits 10 s and SIGKILLs us on every disable.
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}
