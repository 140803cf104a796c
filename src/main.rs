//! The `es-logging-plugin` command: `serve` runs the plugin (the managed plugin's entrypoint),
//! `events` the events collector alone. With `plugin.rs` it is the only place that wires parts
//! together: each part takes what it uses (the events service its spool, shippers and metrics).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use es_logging_plugin::events::service::{self as events, EventsError, Parts};
use es_logging_plugin::metrics;
use es_logging_plugin::plugin::{self, Plugin};
use es_logging_plugin::settings::Settings;
use es_logging_plugin::store::Spool;
use es_logging_plugin::{api, retention};

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
    /// Collect the Docker Engine's events into Elasticsearch, outside a plugin (for hosts that
    /// cannot mount the engine's socket into it). Credentials and other connection options
    /// come from the same ES_* variables as the plugin's settings.
    Events {
        /// The engine's API socket, as a path or unix:// URL.
        #[arg(
            long,
            env = "DOCKER_HOST",
            default_value = "unix:///var/run/docker.sock"
        )]
        docker_host: String,
        /// Elasticsearch nodes (comma-separated), as the `hosts` log-opt; default ES_HOSTS.
        #[arg(long)]
        hosts: Option<String>,
        /// Where event documents go; default EVENTS_INDEX or logs-docker.events-default.
        #[arg(long)]
        index: Option<String>,
        /// Engine-side filters, as EVENTS_FILTERS.
        #[arg(long)]
        filters: Option<String>,
        /// ecs or logtail, as EVENTS_FORMAT.
        #[arg(long)]
        format: Option<String>,
        /// Where the events store and its checkpoint live.
        #[arg(
            long,
            env = "STATE_DIR",
            default_value = "/var/lib/es-logging-plugin-events"
        )]
        state_dir: PathBuf,
    },
}

/// How long shutdown waits for pipelines to drain and streams to end before exiting; under the
/// engine's 10 s before SIGKILL.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(8);

fn main() -> anyhow::Result<()> {
    // Everything the plugin creates (socket, state, local copies) is its own: without this the
    // socket is open to the umask between bind and chmod, and a directory created without an
    // explicit mode gets 0755.
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe { libc::umask(0o077) };
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
        Command::Events {
            docker_host,
            hosts,
            index,
            filters,
            format,
            state_dir,
        } => {
            let socket = docker_host
                .strip_prefix("unix://")
                .unwrap_or(&docker_host)
                .to_owned();
            let overrides = [
                ("EVENTS", Some("true".to_owned())),
                ("EVENTS_SOCKET", Some(socket)),
                ("EVENTS_INDEX", index),
                ("EVENTS_FILTERS", filters),
                ("EVENTS_FORMAT", format),
                ("ES_HOSTS", hosts),
            ];
            let settings = Settings::from_lookup(|name| {
                overrides
                    .iter()
                    .find(|(key, value)| *key == name && value.is_some())
                    .and_then(|(_, value)| value.clone())
                    .or_else(|| std::env::var(name).ok())
            })?;
            init_logging(&settings.log_level);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(collect_events(settings, &state_dir))
        }
    }
}

/// Starts the events service, in a task of `tracker`, if the EVENTS settings ask for it. A
/// missing destination is an ERROR in the log, not a reason to refuse serving logs. With
/// `on_stale_socket` (the plugin, whose engine socket is a bind mount), a stale socket cancels
/// that token.
fn start_events(
    settings: &Settings,
    parts: Parts,
    tracker: &TaskTracker,
    state_dir: &Path,
    shutdown: &CancellationToken,
    on_stale_socket: Option<CancellationToken>,
) -> bool {
    let Some(events) = settings.events.clone() else {
        return false;
    };
    let es = match events::destination(&settings.option_defaults, &events.index) {
        Ok(es) => es,
        Err(error) => {
            tracing::error!(%error, "EVENTS is on but events cannot be shipped; not collecting them");
            return false;
        }
    };
    let run = events::run(
        events,
        es,
        state_dir.join("events"),
        parts,
        shutdown.clone(),
        on_stale_socket
            .is_some()
            .then_some(events::STALE_SOCKET_LIMIT),
    );
    tracker.spawn(async move {
        match run.await {
            Ok(()) => {}
            Err(error @ EventsError::SocketStale { .. }) => {
                tracing::error!(%error, "restarting");
                if let Some(stale) = on_stale_socket {
                    stale.cancel();
                }
            }
            Err(error) => tracing::error!(%error, "the events collector stopped"),
        }
    });
    true
}

/// The `events` command: the events service alone, until SIGTERM or SIGINT. It needs only a
/// spool budget, shippers and metrics of its own: no run table, no container stores.
async fn collect_events(settings: Settings, state_dir: &Path) -> anyhow::Result<()> {
    create_private_dir(state_dir)?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let spool = Arc::new(Spool::new(settings.spool_max_size));
    // The events store is never stopped, so it is never drained and released.
    let on_drained = Arc::new(|_: &_| {});
    let parts = plugin::shipping(spool, &settings, state_dir, &shutdown, &tracker, on_drained);
    let metrics = Arc::clone(&parts.metrics);
    if !start_events(&settings, parts, &tracker, state_dir, &shutdown, None) {
        anyhow::bail!("nothing to do: the events collector could not start (see the log above)");
    }
    if let Some(addr) = settings.metrics_addr {
        tracker.spawn(metrics::serve(addr, metrics, shutdown.clone()));
    }
    wait_for_signal().await;
    shutdown.cancel();
    plugin::wind_down(&tracker, SHUTDOWN_LIMIT).await;
    Ok(())
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
    plugin.tracker().spawn(retention::run(
        Arc::clone(&plugin),
        plugin.settings().local_logs_max_age,
        shutdown.clone(),
    ));
    let stale_socket = CancellationToken::new();
    let parts = Parts {
        spool: Arc::clone(plugin.stores().spool()),
        shippers: Arc::clone(plugin.shippers()),
        metrics: Arc::clone(plugin.metrics()),
    };
    start_events(
        plugin.settings(),
        parts,
        plugin.tracker(),
        state_dir,
        &shutdown,
        Some(stale_socket.clone()),
    );
    if let Some(addr) = plugin.settings().metrics_addr {
        let metrics = Arc::clone(plugin.metrics());
        plugin
            .tracker()
            .spawn(metrics::serve(addr, metrics, shutdown.clone()));
    }

    // The engine restarts a plugin that exits on its own (not one it stopped), mounting the
    // engine socket afresh: the only cure for a stale one.
    let restart = tokio::select! {
        _ = wait_for_signal() => false,
        _ = stale_socket.cancelled() => true,
    };
    tracing::info!("shutting down: draining FIFOs and ending streams");
    shutdown.cancel();
    plugin.wind_down(SHUTDOWN_LIMIT).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    let _ = std::fs::remove_file(socket);
    tracing::info!("stopped");
    if restart {
        anyhow::bail!("exiting so that the engine restarts the plugin with its current socket");
    }
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
    es_logging_plugin::fsutil::create_private_dir(dir)
        .with_context(|| format!("cannot create the state dir {} (mode 0700)", dir.display()))
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
