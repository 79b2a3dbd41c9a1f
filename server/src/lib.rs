//! lbsync's server: named folders (current entries, history, a change journal) over the dedup
//! chunk store, served as the gRPC service `lbsync.v1.Sync`.
//!
//! [`run`] serves on a listener until a shutdown future resolves; `main.rs` only parses arguments.
//! Metadata lives in the store's sled database ([`folders`], [`users`], [`scope`]); chunk bytes
//! in its packs. The server never trusts a client's chunk id: every chunk is re-hashed on arrival.
//! Every request is authorized against the folder it names ([`authz`]) before it reads or changes
//! anything, and a user's token reaches only the chunks and manifests of that folder's scope.

pub mod admin;
pub mod auth;
pub mod authz;
pub mod backend;
pub mod cli;
pub mod control;
pub mod error;
pub mod folders;
mod gate;
mod health;
pub mod meta;
pub mod metrics;
pub mod pg;
pub mod scope;
pub mod sealed;
pub mod service;
pub mod tls;
pub mod users;

use std::future::Future;

use lbsync_proto::http2::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use lbsync_proto::pb::sync_server::SyncServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

pub use auth::Tokens;
pub use backend::Backend;
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use service::{Limits, SyncService};

/// How long a graceful shutdown waits for in-flight requests.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How the server is set up.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// Admin tokens (the token file's): they may use every folder. When set, or when the store
    /// holds user tokens, every RPC must carry a token.
    pub tokens: Option<Tokens>,
    /// PEM certificate chain and key, to serve TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Message and batch limits.
    pub limits: Limits,
    /// Where the server counts what it does (serve them with [`metrics::serve`]).
    pub metrics: Metrics,
}

/// Serves the store on `listener` until `shutdown` resolves, then stops gracefully: health turns
/// NOT_SERVING, systemd hears STOPPING=1, no new connection is accepted, open Changes and health
/// Watch streams are ended, in-flight requests finish (a commit is one transaction: it either
/// lands or not) within 10 s, and the index is flushed.
///
/// Besides `lbsync.v1.Sync` it serves `grpc.health.v1.Health` and server reflection (v1 and
/// v1alpha), neither of which needs a token. Once it serves it tells systemd READY=1 (when
/// `NOTIFY_SOCKET` is set) and writes its pid to `STORE/server.pid` (removed at the stop), which
/// the admin commands name when they find the store locked.
///
/// `backend` is a [`Backend`] or an embedded store (a `PackStore`, opened as
/// [`Backend::local`]).
pub async fn run<B>(
    listener: TcpListener,
    backend: B,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()>
where
    B: TryInto<Backend>,
    Error: From<B::Error>,
{
    let backend: Backend = backend.try_into()?;
    let serve_err = |e: &dyn std::fmt::Display| Error::Serve(e.to_string());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = config.metrics.clone();
    let service = SyncService::new(
        backend.clone(),
        stop_rx.clone(),
        config.limits,
        config.tokens.clone(),
    )?
    .with_metrics(metrics.clone());
    // Commits made through other servers sharing the metadata wake this one's streams too.
    let listen = backend
        .listen
        .clone()
        .map(|url| tokio::spawn(crate::pg::listen(&url, service.commits(), stop_rx)));
    let tokens_required = {
        // The metadata may be a database: ask off the async threads.
        let service = service.clone();
        tokio::task::spawn_blocking(move || service.tokens_required())
            .await
            .map_err(|e| serve_err(&e))?
    };
    let limit = config.limits.max_message_bytes;
    // Every handler authorizes its request against the folder it names (`authz`).
    // zstd both ways (`service::COMPRESSION`); answers are compressed only for a client whose
    // request accepts it, so older clients see no change.
    let server = SyncServer::new(service)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
        .send_compressed(tonic::codec::CompressionEncoding::Zstd);
    // Keepalive pings end connections whose peer is gone or speaks garbage.
    let mut builder = Server::builder()
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        // tower's ConcurrencyLimit on each connection: requests past it wait (the per-user
        // bound across connections is the service's, `Limits::max_requests_per_user`).
        .concurrency_limit_per_connection(service::MAX_REQUESTS_PER_CONNECTION);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mut health = health::Health::new(reporter).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lbsync_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_err =
        |e: tonic_reflection::server::Error| serve_err(&format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_err)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_err)?;
    if let Some((cert, key)) = &config.tls {
        // tonic builds its rustls config with the process's default provider. Ours is ring,
        // named here: with aws-lc-rs in the build as well (object_store's S3 client), rustls
        // would not pick one by itself. Another caller may have installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(|e| serve_err(&format!("TLS certificate or key unusable: {e}")))?;
    }
    let addr = listener.local_addr().map_err(|e| serve_err(&e))?;
    tracing::info!(
        "serving {} on {addr}{}{}",
        backend.describe,
        if config.tls.is_some() {
            " with TLS"
        } else {
            ""
        },
        if tokens_required {
            ", tokens required"
        } else {
            ""
        }
    );
    // `lbsync-server user|token|share|unshare` reach this server through its admin socket.
    let store_dir = backend.local.as_ref().map(|s| s.dir().to_path_buf());
    let control = store_dir
        .clone()
        .map(|dir| tokio::spawn(control::serve(dir, backend.clone())));
    let (began_tx, began_rx) = tokio::sync::oneshot::channel();
    let io_metrics = metrics.clone();
    let stopping = health.clone();
    let serve = builder
        .layer(metrics::MetricsLayer {
            metrics: metrics.clone(),
            health: health.clone(),
        })
        .add_service(server)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            // The builder's TCP options apply only to listeners it binds itself; set them here.
            // Without TCP_NODELAY every small answer (MissingChunks, a commit) waits ~40 ms for a
            // delayed ACK.
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(std::time::Duration::from_secs(60)))
                .map(move |conn| conn.map(|c| metrics::MeteredIo::new(c, io_metrics.clone()))),
            async move {
                shutdown.await;
                tracing::info!("shutting down");
                stopping.stopping().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                let _ = stop_tx.send(true);
                let mut watchers = stopping;
                watchers.close().await;
                let _ = began_tx.send(());
            },
        );
    let pid_file = store_dir.as_deref().map(pid_path);
    if let Some(pid_file) = &pid_file
        && let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id()))
    {
        tracing::warn!("cannot write {} ({e})", pid_file.display());
    }
    health.serving().await;
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving on {addr}")),
    ]) {
        tracing::warn!("cannot tell systemd the server is ready: {e}");
    }
    // In-flight requests get a while to finish; a client that keeps an idle connection open does
    // not hold the server up beyond that.
    let drain = async {
        if began_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
    };
    tokio::select! {
        served = serve => served.map_err(|e| serve_err(&error::chain(&e)))?,
        () = drain => tracing::warn!(
            "connections still open {}s after shutdown began: closing them",
            SHUTDOWN_DRAIN.as_secs()
        ),
    }
    for task in control.iter().chain(&listen) {
        task.abort();
    }
    health.close().await;
    if let (Some(dir), Some(pid_file)) = (&store_dir, &pid_file) {
        let _ = std::fs::remove_file(control::socket_path(dir));
        let _ = std::fs::remove_file(pid_file);
    }
    tokio::task::spawn_blocking(move || backend.flush())
        .await
        .map_err(|e| serve_err(&e))??;
    Ok(())
}

/// Where a serving server keeps its pid in the store in `dir`.
pub fn pid_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("server.pid")
}
