//! `grpc.health.v1.Health`: what the server answers for `""` (the whole server) and for
//! `lbsync.v1.Sync`.
//!
//! SERVING once the store is open and the listener is up; NOT_SERVING from the moment a graceful
//! stop begins (for good), and while the store fails: an RPC answered with a store failure (a
//! write error, a full disk; see [`crate::metrics::STORE_FAILURE_HEADER`]) turns it NOT_SERVING,
//! the next write RPC that succeeds turns it back. Health and reflection need no token.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lbsync_proto::pb::sync_server::SyncServer;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The names health answers for: the whole server, and the sync service.
fn names() -> [&'static str; 2] {
    ["", <SyncServer<crate::SyncService> as NamedService>::NAME]
}

/// The health the server reports; clones share it.
#[derive(Clone)]
pub(crate) struct Health {
    reporter: HealthReporter,
    serving: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
}

impl Health {
    /// NOT_SERVING for both names until [`Health::serving`].
    pub(crate) async fn new(reporter: HealthReporter) -> Self {
        let h = Self {
            reporter,
            serving: Arc::default(),
            stopping: Arc::default(),
            failed: Arc::default(),
        };
        h.publish().await;
        h
    }

    /// The store is open and the listener up.
    pub(crate) async fn serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
        self.publish().await;
    }

    /// A graceful stop began: NOT_SERVING from now on.
    pub(crate) async fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.publish().await;
    }

    /// The store failed (`true`) or worked again.
    pub(crate) async fn store_failed(&self, failed: bool) {
        if self.failed.swap(failed, Ordering::SeqCst) != failed {
            if failed {
                tracing::warn!("health: NOT_SERVING, the store failed a request");
            } else {
                tracing::info!("health: SERVING again, the store took a write");
            }
            self.publish().await;
        }
    }

    /// Ends open Watch streams (they would hold the graceful stop up): each watcher has seen
    /// NOT_SERVING first.
    pub(crate) async fn close(&mut self) {
        for name in names() {
            self.reporter.clear_service_status(name).await;
        }
    }

    async fn publish(&self) {
        let up = self.serving.load(Ordering::SeqCst)
            && !self.stopping.load(Ordering::SeqCst)
            && !self.failed.load(Ordering::SeqCst);
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in names() {
            self.reporter.set_service_status(name, status).await;
        }
    }
}
