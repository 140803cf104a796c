//! The plugin's HTTP API on its unix socket, as the engine speaks it (docs/protocol.md).
//!
//! | endpoint | request | answer |
//! |---|---|---|
//! | `/Plugin.Activate` | empty | `{"Implements":["LogDriver"]}` (managed plugins never get it; legacy ones do) |
//! | `/LogDriver.Capabilities` | empty | `{"Cap":{"ReadLogs":true}}` |
//! | `/LogDriver.StartLogging` | `{"File","Info"}` | `{"Err":""}`, or `{"Err":"<why>"}`: the container does not start |
//! | `/LogDriver.StopLogging` | `{"File"}` | `{"Err":""}` always, after draining the FIFO |
//! | `/LogDriver.ReadLogs` | `{"Info","Config"}` | 200 and a stream of frames; 400/500 with `{"Err"}` |
//!
//! HTTP/1.1, any method, Host and Content-Type ignored. Each connection is served by its own
//! task, so a long `docker logs -f` never delays a StartLogging. Bodies over [`MAX_BODY`] are
//! refused.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::container_id::ContainerId;
use crate::plugin::Plugin;
use crate::protocol;
use crate::readlogs::{self, FollowEnd, ReadRequest};

/// Largest request body accepted. StartLogging carries the container's env and labels; 8 MiB is
/// far above any real one and still bounded.
pub const MAX_BODY: usize = 8 << 20;

/// The answer body: a whole JSON document, or a ReadLogs stream.
pub enum AnswerBody {
    Full(Full<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            AnswerBody::Full(full) => Pin::new(full).poll_frame(cx),
            AnswerBody::Stream(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }
}

type Answer = Response<AnswerBody>;

/// Accepts connections until `shutdown` fires, then lets open requests finish for up to
/// `grace`. Accept errors are logged and accepting goes on.
pub async fn serve(
    listener: UnixListener,
    plugin: Arc<Plugin>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept on the plugin socket failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let plugin = Arc::clone(&plugin);
        let service = service_fn(move |request| {
            let plugin = Arc::clone(&plugin);
            async move { Ok::<_, Infallible>(route(plugin, request).await) }
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "plugin API connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("plugin API connections still open at shutdown");
    }
}

async fn route(plugin: Arc<Plugin>, request: Request<Incoming>) -> Answer {
    let path = request.uri().path().to_owned();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let mut answer = err_answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "{path}: cannot read the request body ({error}); the limit is {MAX_BODY} bytes"
                ),
            );
            // The rest of the body is never read, so this connection ends with the answer; say
            // so, or a client pools it and its next request fails on a closed connection.
            answer.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            return answer;
        }
    };
    match path.as_str() {
        "/Plugin.Activate" => json(StatusCode::OK, &serde_json::json!({"Implements": ["LogDriver"]})),
        "/LogDriver.Capabilities" => json(StatusCode::OK, &serde_json::json!({"Cap": {"ReadLogs": true}})),
        "/LogDriver.StartLogging" => {
            let request: protocol::StartLogging = match parse(&path, &body) {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            // Off the runtime's threads: opening a store reads its files and the run table is
            // synced before the answer, while those threads drain every running container.
            let started = tokio::task::spawn_blocking(move || plugin.start_logging(request)).await;
            match started {
                Ok(Ok(())) => ok(),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "StartLogging refused");
                    err_answer(StatusCode::OK, &error.to_string())
                }
                Err(error) => {
                    tracing::error!(%error, "StartLogging failed");
                    err_answer(StatusCode::OK, &format!("StartLogging failed in the plugin: {error}"))
                }
            }
        }
        "/LogDriver.StopLogging" => {
            // Never fail: even an unreadable body gets `{}` (a failure leaks the engine's FIFO).
            let file = serde_json::from_slice::<protocol::StopLogging>(&body).map(|r| r.file).unwrap_or_default();
            plugin.stop_logging(&file).await;
            ok()
        }
        "/LogDriver.ReadLogs" => read_logs(plugin, &path, &body).await,
        _ => err_answer(
            StatusCode::NOT_FOUND,
            &format!("unknown endpoint {path}; this logging plugin serves /Plugin.Activate and /LogDriver.{{Capabilities,StartLogging,StopLogging,ReadLogs}}"),
        ),
    }
}

async fn read_logs(plugin: Arc<Plugin>, path: &str, body: &[u8]) -> Answer {
    let request: protocol::ReadLogs = match parse(path, body) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    let id = match ContainerId::parse(&request.info.container_id) {
        Ok(id) => id,
        Err(error) => return err_answer(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    let read = match ReadRequest::parse(&request.config) {
        Ok(r) => r,
        Err(error) => return err_answer(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    // Opening a store that is not open scans its active segment for a torn tail: file work,
    // kept off the runtime's threads, which drain the containers' pipes.
    let opening = {
        let (plugin, id) = (Arc::clone(&plugin), id.clone());
        tokio::task::spawn_blocking(move || plugin.stores().existing(&id)).await
    };
    let opened = opening.unwrap_or_else(|error| {
        Err(crate::store::StoreError::Open {
            path: id.as_str().into(),
            source: std::io::Error::other(error.to_string()),
        })
    });
    let store = match opened {
        Ok(Some(store)) => store,
        Ok(None) => {
            tracing::info!(
                container = id.short(),
                "ReadLogs: no local copy for this container"
            );
            return stream_answer(mpsc::channel(1).1);
        }
        Err(error) => {
            return err_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot read the local copy: {error}"),
            );
        }
    };
    tracing::info!(container = id.short(), tail = ?read.tail, follow = read.follow, "ReadLogs served");
    let follow_end = FollowEnd {
        active_runs: plugin.watch_runs(&id),
        shutdown: plugin.shutdown_token().clone(),
    };
    let (tx, rx) = mpsc::channel(8);
    let tracker = plugin.tracker().clone();
    tracker.spawn(async move {
        if let Err(error) = readlogs::stream(store, read, follow_end, tx).await {
            tracing::warn!(%error, container = id.short(), "ReadLogs stream cut short");
        }
        // The reader's handle is gone: a stopped container's store closes again (after a sync:
        // off the runtime's threads).
        let closing = tokio::task::spawn_blocking(move || plugin.stores().close_idle());
        if let Err(error) = closing.await {
            tracing::error!(%error, "closing idle local copies failed");
        }
    });
    stream_answer(rx)
}

fn parse<T: serde::de::DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, Box<Answer>> {
    // The engine sends an empty body for some calls; treat it as `{}`.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|error| {
        Box::new(err_answer(
            StatusCode::BAD_REQUEST,
            &format!("{path}: the request body is not the JSON the engine sends: {error}"),
        ))
    })
}

fn stream_answer(rx: mpsc::Receiver<Bytes>) -> Answer {
    let mut answer = Response::new(AnswerBody::Stream(rx));
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-json-stream"),
    );
    answer
}

fn ok() -> Answer {
    json(StatusCode::OK, &protocol::ErrAnswer { err: "" })
}

fn err_answer(status: StatusCode, message: &str) -> Answer {
    json(status, &protocol::ErrAnswer { err: message })
}

fn json(status: StatusCode, value: &impl Serialize) -> Answer {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut answer = Response::new(AnswerBody::Full(Full::new(Bytes::from(body))));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/vnd.docker.plugins.v1.2+json"),
    );
    answer
}
