//! The HTTP/1 accept loop: hyper's connection builder with the bounds of
//! contract V3.5, and a graceful stop.
//!
//! Why not `axum::serve`: it does not expose the limits a public server
//! needs. Here the request head is bounded to [`MAX_HEAD_BYTES`] (hyper
//! answers 431 past it), a client must send its whole head within
//! [`HEAD_TIMEOUT`] (a slow client holding a connection is closed), and at
//! most [`max_connections`] connections are served at once (more are
//! closed on accept), so slow or idle clients cannot exhaust the process.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

/// Largest request head (request line and headers) taken: 8 KiB, the
/// smallest buffer hyper allows, and ample for a GET.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// How long a client may take to send a request head, counted from the
/// first byte or from the end of the previous response on a kept-alive
/// connection.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections above the requests and event streams the limits allow: room
/// for kept-alive connections between two requests and for clients still
/// sending their head, so that a request past `UPR_HTTP_MAX_REQUESTS` is
/// answered 503 rather than its connection closed unanswered.
pub const CONNECTION_MARGIN: usize = 64;

/// Connections served at once; past it new connections are closed at once.
/// Each costs a task and a buffer of at most [`MAX_HEAD_BYTES`].
///
/// Derived from the two limits, not fixed: every event stream
/// (`UPR_SSE_MAX_CLIENTS`, 1,000 by default) holds a connection for hours,
/// so a fixed cap near that number would leave ordinary requests
/// (`UPR_HTTP_MAX_REQUESTS`) without a connection once the streams are
/// open. With the defaults: 256 + 1,000 + 64 = 1,320.
pub fn max_connections(max_requests: usize, sse_max_clients: usize) -> usize {
    max_requests
        .saturating_add(sse_max_clients)
        .saturating_add(CONNECTION_MARGIN)
}

/// How long requests in progress may take to finish after shutdown began.
pub const GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener`, at most `max_connections` connections at
/// once, until `shutdown` resolves, then stops accepting and waits up to
/// [`GRACE`] for the connections in progress.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let connections = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead
                        // of spinning on the same error.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    debug!(%peer, "too many connections; closing this one");
                    drop(stream);
                    continue;
                };
                let service = TowerToHyperService::new(router.clone());
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!("HTTP: no longer accepting; finishing requests in progress");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(GRACE) => warn!(grace = ?GRACE, "requests still in progress after the grace period; stopping anyway"),
    }
}
