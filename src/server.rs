//! Accepting connections: hyper with timers, so that no connection holds a place without
//! making progress, and caps on connections open at once, in total and per client address.
//!
//! `axum::serve` runs hyper without a timer and without limits: a client that connects and
//! sends nothing, trickles its headers one byte at a time (slow-loris), or keeps a
//! connection idle, holds it forever. Here:
//!
//! - every connection must complete its first request head within the first-request
//!   timeout, counted from the accept, whatever the protocol (hyper-util's protocol
//!   detection has no timer of its own, and an HTTP/2 client that sent only its preface is
//!   otherwise never timed out); one that does not is dropped;
//! - HTTP/1: hyper's header-read timeout closes a client slow to send its headers, and an
//!   idle keep-alive connection (hyper starts it whenever a connection waits for the first
//!   byte of a request);
//! - HTTP/2: a connection with no request open for the same time is shut down gracefully
//!   (GOAWAY); it may run at most [`MAX_STREAMS`] requests at once, and is pinged and
//!   closed when the peer stops answering. HTTP/2 is served for the clients and proxies
//!   that speak it in clear text (h2c, with prior knowledge); browsers reach this server
//!   over HTTP/1.1 (they speak HTTP/2 only over TLS);
//! - a connection's places in the caps travel with its socket: a websocket holds its
//!   place until it closes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::limits::{ConnectionSlot, ConnectionSlots, HttpLimits, Refused};

/// What a connection over a cap is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: text/plain\r\nContent-Length: 32\r\nConnection: close\r\n\r\n\
too many connections, try again\n";

/// How long requests in flight get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Requests one HTTP/2 connection may run at once (hyper's default is 200): a client
/// wanting more opens connections, which the caps count.
pub const MAX_STREAMS: u32 = 16;

/// Serves `router` on `listener` until `shutdown` resolves, then lets the requests in
/// flight finish (up to [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = ConnectionSlots::new(&limits);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    // Every connection task holds a sender: when all are dropped, every connection is done.
    let (stop, stopping) = watch::channel(false);
    let (running, mut all_done) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match slots.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refuse(stream, why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let service = TowerToHyperService::new(Tracked {
            router: router.clone(),
            activity: activity.clone(),
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(Admitted::new(stream, slot)), service)
            .into_owned();
        tokio::spawn(drive(
            connection,
            activity,
            limits,
            stopping.clone(),
            running.clone(),
            peer,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    drop(running);
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the shutdown grace period");
    }
    Ok(())
}

/// Answers 503 to a connection over a cap and closes it, taking at most a second.
fn refuse(stream: TcpStream, why: Refused) {
    metrics::counter!("wallet_http_connections_refused_total", "cap" => why.label()).increment(1);
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(OVER_CAPACITY).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

/// One HTTP connection, before any upgrade.
type Connection = hyper_util::server::conn::auto::UpgradeableConnection<
    'static,
    TokioIo<Admitted>,
    TowerToHyperService<Tracked>,
    TokioExecutor,
>;

/// Runs one connection under its timers: the first request, HTTP/2 idleness, shutdown.
async fn drive(
    connection: Connection,
    activity: Arc<Activity>,
    limits: HttpLimits,
    mut stopping: watch::Receiver<bool>,
    _running: mpsc::Sender<()>,
    peer: SocketAddr,
) {
    tokio::pin!(connection);
    let first_request_by = Instant::now() + limits.first_request_timeout;
    let mut idle_since: Option<Instant> = None;
    let mut requests_seen = 0;
    // Set once a graceful shutdown has begun: the connection is dropped then.
    let mut drop_at: Option<Instant> = None;
    loop {
        let requests = activity.requests.load(Ordering::Acquire);
        let started = requests > 0;
        let idle = activity.in_flight.load(Ordering::Acquire) == 0;
        // A request that came and went since the last look counts as activity too.
        if requests != requests_seen {
            requests_seen = requests;
            idle_since = None;
        }
        idle_since = match (idle, idle_since) {
            (true, None) => Some(Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
        // HTTP/1 idleness is hyper's header-read timeout; HTTP/2 has none of its own.
        let idle_until = idle_since
            .filter(|_| activity.http2.load(Ordering::Acquire) && drop_at.is_none())
            .map(|since| since + limits.header_timeout);
        tokio::select! {
            done = connection.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "connection closed");
                }
                return;
            }
            () = tokio::time::sleep_until(first_request_by), if !started => {
                metrics::counter!("wallet_http_first_request_timeouts_total").increment(1);
                tracing::debug!(%peer, "no request within the first-request timeout");
                return;
            }
            () = activity.changed.notified() => {}
            () = until(idle_until) => {
                connection.as_mut().graceful_shutdown();
                drop_at = Some(Instant::now() + limits.header_timeout);
            }
            Ok(()) = stopping.changed(), if drop_at.is_none() => {
                connection.as_mut().graceful_shutdown();
                drop_at = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            () = until(drop_at) => {
                tracing::debug!(%peer, "connection dropped: requests still open after its shutdown");
                return;
            }
        }
    }
}

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, as its requests come and go.
#[derive(Default)]
struct Activity {
    /// Request heads that have arrived.
    requests: AtomicUsize,
    /// The connection speaks HTTP/2.
    http2: AtomicBool,
    /// Requests whose response is not fully sent yet.
    in_flight: AtomicUsize,
    /// Wakes the connection's task when any of the above changes.
    changed: Notify,
}

/// One request in flight on a connection; counted out when its response body ends.
struct InFlight(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Release);
        }
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// The router, counting each request in flight on its connection until its response has
/// been sent.
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
}

impl tower::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin(request.version());
        let response = tower::Service::call(&mut self.router, request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(CountedBody {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body that keeps its request counted in flight until it is dropped.
struct CountedBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// An accepted socket with its places in the connection caps, given back when the socket
/// is dropped — after the HTTP connection, or after the websocket it was upgraded to.
struct Admitted {
    stream: TcpStream,
    _slot: ConnectionSlot,
}

impl Admitted {
    fn new(stream: TcpStream, slot: ConnectionSlot) -> Self {
        metrics::gauge!("wallet_http_connections").increment(1.0);
        Admitted {
            stream,
            _slot: slot,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        metrics::gauge!("wallet_http_connections").decrement(1.0);
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
