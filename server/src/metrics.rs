//! Prometheus metrics: what the server counts, the tower layer that times every RPC and counts its
//! status, the connection wrapper that counts clients and bytes, and the `/metrics` endpoint.
//!
//! Metric names (the text exposition adds `_total` to counters and `_bucket`/`_sum`/`_count` to
//! the histogram):
//! - `lbsync_commits_total{outcome="applied"|"conflict"}`
//! - `lbsync_chunks_received_total{outcome="stored"|"deduplicated"}`
//! - `lbsync_received_bytes_total`, `lbsync_sent_bytes_total`: bytes read from and written to
//!   client connections (HTTP/2 and TLS framing included)
//! - `lbsync_rpc_duration_seconds{method}`: from a request's arrival to its response headers
//! - `lbsync_rpc_errors_total{method,code}`: answers with a gRPC status other than OK, as the
//!   response headers carry it (a stream that fails after its first message is not counted)
//! - `lbsync_connected_clients`: open client connections
//!
//! `method` is the gRPC path (`/lbsync.v1.Sync/Commit`); paths the server does not implement are
//! counted as `unknown`, so a client cannot grow the label set.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tonic::transport::server::Connected;

use crate::health::Health;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: String,
    code: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

struct Inner {
    registry: Registry,
    commits: Family<Outcome, Counter>,
    chunks: Family<Outcome, Counter>,
    received: Counter,
    sent: Counter,
    latency: Family<Method, Histogram, fn() -> Histogram>,
    errors: Family<MethodCode, Counter>,
    clients: Gauge,
}

/// The server's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let commits = Family::<Outcome, Counter>::default();
        let chunks = Family::<Outcome, Counter>::default();
        let received = Counter::default();
        let sent = Counter::default();
        let latency =
            Family::<Method, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let errors = Family::<MethodCode, Counter>::default();
        let clients = Gauge::default();
        registry.register(
            "lbsync_commits",
            "Commits answered, by outcome (applied, conflict)",
            commits.clone(),
        );
        registry.register(
            "lbsync_chunks_received",
            "Chunks received, by outcome (stored: new; deduplicated: the store had them)",
            chunks.clone(),
        );
        registry.register(
            "lbsync_received_bytes",
            "Bytes read from client connections",
            received.clone(),
        );
        registry.register(
            "lbsync_sent_bytes",
            "Bytes written to client connections",
            sent.clone(),
        );
        registry.register(
            "lbsync_rpc_duration_seconds",
            "Time from a request's arrival to its response headers, by gRPC method",
            latency.clone(),
        );
        registry.register(
            "lbsync_rpc_errors",
            "Answers with a gRPC status other than OK, by method and status code",
            errors.clone(),
        );
        registry.register(
            "lbsync_connected_clients",
            "Open client connections",
            clients.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                commits,
                chunks,
                received,
                sent,
                latency,
                errors,
                clients,
            }),
        }
    }

    /// Counts a commit that was applied (`true`) or refused as a conflict.
    pub fn commit(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "conflict" };
        self.inner.commits.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts chunks received: `stored` new ones, `deduplicated` ones the store had.
    pub fn chunks(&self, stored: u64, deduplicated: u64) {
        let c = &self.inner.chunks;
        c.get_or_create(&Outcome { outcome: "stored" })
            .inc_by(stored);
        c.get_or_create(&Outcome {
            outcome: "deduplicated",
        })
        .inc_by(deduplicated);
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    fn rpc(&self, method: &str, code: i32, took: std::time::Duration) {
        // Unknown paths all land in one label value.
        let method = if code == tonic::Code::Unimplemented as i32 {
            "unknown".to_owned()
        } else {
            method.to_owned()
        };
        if code != 0 {
            self.inner
                .errors
                .get_or_create(&MethodCode {
                    method: method.clone(),
                    code: format!("{:?}", tonic::Code::from_i32(code)),
                })
                .inc();
        }
        self.inner
            .latency
            .get_or_create(&Method { method })
            .observe(took.as_secs_f64());
    }
}

/// The response header with which [`crate::error::status`] marks a failure of the store itself
/// (a write error, a full disk): the layer turns health NOT_SERVING on it and removes it.
pub(crate) const STORE_FAILURE_HEADER: &str = "lbsync-store-failure";

/// The RPCs that write to the store: one that succeeds shows the store works again.
fn writes(method: &str) -> bool {
    matches!(
        method,
        "/lbsync.v1.Sync/PutChunks" | "/lbsync.v1.Sync/Commit" | "/lbsync.v1.Sync/CommitBatch"
    )
}

/// The tower layer on the gRPC server: times each RPC, counts its status, and tells [`Health`]
/// about store failures.
#[derive(Clone)]
pub(crate) struct MetricsLayer {
    pub(crate) metrics: Metrics,
    pub(crate) health: Health,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service wrapped by [`MetricsLayer`].
#[derive(Clone)]
pub(crate) struct Metered<S> {
    inner: S,
    layer: MetricsLayer,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let method = req.uri().path().to_owned();
        let start = Instant::now();
        Box::pin(async move {
            let mut resp = inner.call(req).await?;
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            layer.metrics.rpc(&method, code, start.elapsed());
            if resp.headers_mut().remove(STORE_FAILURE_HEADER).is_some() {
                layer.health.store_failed(true).await;
            } else if code == 0 && writes(&method) {
                layer.health.store_failed(false).await;
            }
            Ok(resp)
        })
    }
}

/// A client connection that counts the bytes it carries and, while open, one connected client.
pub(crate) struct MeteredIo<T> {
    inner: T,
    metrics: Metrics,
}

impl<T> MeteredIo<T> {
    pub(crate) fn new(inner: T, metrics: Metrics) -> Self {
        metrics.inner.clients.inc();
        Self { inner, metrics }
    }
}

impl<T> Drop for MeteredIo<T> {
    fn drop(&mut self) {
        self.metrics.inner.clients.dec();
    }
}

impl<T: Connected> Connected for MeteredIo<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MeteredIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.metrics.inner.received.inc_by(n as u64);
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MeteredIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.metrics.inner.sent.inc_by(*n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.metrics.inner.sent.inc_by(*n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped; other paths get 404.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |req: http::Request<_>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), answer)
                .await;
        });
    }
}

fn respond<B>(req: &http::Request<B>, metrics: &Metrics) -> http::Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => (
            http::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the metrics are at GET /metrics\n".to_owned(),
        ),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(kind),
    );
    resp
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::server::{HealthReporter, HealthService};
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    async fn status(h: &HealthService, name: &str) -> ServingStatus {
        h.check(tonic::Request::new(HealthCheckRequest {
            service: name.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .status()
    }

    /// A response marked as a store failure turns health NOT_SERVING (the mark does not leave);
    /// a successful write turns it back; other RPCs' successes do not.
    #[tokio::test]
    async fn store_failures_turn_health_not_serving_until_a_write_succeeds() {
        let reporter = HealthReporter::new();
        let health = Health::new(reporter.clone()).await;
        health.serving().await;
        let service = HealthService::from_health_reporter(reporter);
        let metrics = Metrics::new();
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            let mut resp = http::Response::new(());
            if req.uri().path().ends_with("/Commit") && req.headers().contains_key("fail") {
                resp.headers_mut()
                    .insert("grpc-status", "13".parse().unwrap());
                resp.headers_mut()
                    .insert(STORE_FAILURE_HEADER, "1".parse().unwrap());
            }
            Ok::<_, Infallible>(resp)
        });
        let mut svc = MetricsLayer {
            metrics: metrics.clone(),
            health: health.clone(),
        }
        .layer(inner);
        let call = |path: &str, fail: bool| {
            let mut b = http::Request::builder().uri(format!("http://x{path}"));
            if fail {
                b = b.header("fail", "1");
            }
            b.body(()).unwrap()
        };
        assert_eq!(
            status(&service, "lbsync.v1.Sync").await,
            ServingStatus::Serving
        );
        let resp = svc
            .ready()
            .await
            .unwrap()
            .call(call("/lbsync.v1.Sync/Commit", true))
            .await
            .unwrap();
        assert!(!resp.headers().contains_key(STORE_FAILURE_HEADER));
        assert_eq!(status(&service, "").await, ServingStatus::NotServing);
        assert_eq!(
            status(&service, "lbsync.v1.Sync").await,
            ServingStatus::NotServing
        );
        svc.ready()
            .await
            .unwrap()
            .call(call("/lbsync.v1.Sync/History", false))
            .await
            .unwrap();
        assert_eq!(status(&service, "").await, ServingStatus::NotServing);
        svc.ready()
            .await
            .unwrap()
            .call(call("/lbsync.v1.Sync/Commit", false))
            .await
            .unwrap();
        assert_eq!(status(&service, "").await, ServingStatus::Serving);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"lbsync_rpc_errors_total{method="/lbsync.v1.Sync/Commit",code="Internal"} 1"#
            ),
            "{text}"
        );
        health.stopping().await;
        svc.ready()
            .await
            .unwrap()
            .call(call("/lbsync.v1.Sync/Commit", false))
            .await
            .unwrap();
        assert_eq!(
            status(&service, "").await,
            ServingStatus::NotServing,
            "a stop is for good"
        );
    }
}
