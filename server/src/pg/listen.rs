//! Commits of every server, into this server's Changes streams: `LISTEN lbsync_commits`.
//!
//! Each commit transaction notifies `FOLDER HEAD` on [`CHANNEL`] (see [`crate::pg`]);
//! [`listen`] sends each as `(folder, head)` into the broadcast the Changes streams wait on.
//! A stream woken reads the journal from its own cursor, so a notification is only a wake-up:
//! one delivered twice (this server's own commits arrive from the service and from here), or
//! one naming an older head, re-reads nothing new and sends nothing (`changes.rs` skips a seq
//! at or below its cursor and sends no empty message). A notification missed while the
//! connection was down is made up for after each (re)connect: once listening, [`listen`] sends
//! every folder's head.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

/// The notification channel of commits.
pub const CHANNEL: &str = "lbsync_commits";

/// The first wait before a reconnect; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens for commits at the database `url` and sends each (folder, head) into `commits`, until
/// `shutdown` turns true (or its sender goes). Reconnects with backoff when the connection drops;
/// after every connect it sends each folder's current head, so that a notification missed
/// meanwhile leaves no stream asleep. Spawn it: `tokio::spawn(pg::listen(url, tx, shutdown))`.
pub fn listen(
    url: &str,
    commits: broadcast::Sender<(Arc<str>, u64)>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let parsed = url
        .parse::<tokio_postgres::Config>()
        .map_err(|e| super::scrub(&e.to_string(), url));
    let redacted = super::redact(url);
    async move {
        let mut config = match parsed {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "not listening for other servers' commits: the metadata URL {redacted} does \
                     not parse ({e})"
                );
                return;
            }
        };
        config
            .application_name("lbsync-listen")
            .keepalives(true)
            .keepalives_idle(super::KEEPALIVE_IDLE)
            .connect_timeout(super::CONNECT_TIMEOUT);
        run(config, commits, shutdown).await;
    }
}

/// How a listening session ended.
enum Ended {
    Shutdown,
    /// The connection failed; whether it had got as far as listening.
    Lost(String, bool),
}

async fn run(
    config: tokio_postgres::Config,
    commits: broadcast::Sender<(Arc<str>, u64)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let target =
        super::describe_target(config.get_hosts(), config.get_ports(), config.get_dbname());
    let mut backoff = MIN_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match session(&config, &target, &commits, &mut shutdown).await {
            Ended::Shutdown => return,
            Ended::Lost(why, listened) => {
                if listened {
                    backoff = MIN_BACKOFF;
                }
                tracing::warn!(
                    "lost the notifications of PostgreSQL at {target} ({why}): other servers' \
                     commits reach this server's clients again once it reconnects (in {} ms)",
                    backoff.as_millis()
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Aborts the connection's task when the session ends, however it ends.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One connection: LISTEN, every folder's head, then each notification until it fails.
async fn session(
    config: &tokio_postgres::Config,
    target: &str,
    commits: &broadcast::Sender<(Arc<str>, u64)>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let lost = |e: tokio_postgres::Error, listened| Ended::Lost(super::describe(&e), listened);
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => return lost(e, false),
    };
    let (tx, mut rx) = mpsc::channel(1024);
    // The connection does its I/O only while polled: a task of its own polls it and passes on
    // the notifications (and the error that ends it).
    let _driver = Driver(tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Ok(n)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                None => return,
            }
        }
    }));
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        return lost(e, false);
    }
    // Listening now: a commit after this read is notified, one before it is in its head.
    let heads = match client.query("SELECT name, head FROM folders", &[]).await {
        Ok(rows) => rows,
        Err(e) => return lost(e, false),
    };
    for r in heads {
        let _ = commits.send((r.get::<_, String>(0).into(), r.get::<_, i64>(1) as u64));
    }
    tracing::debug!("listening for commits at PostgreSQL at {target}");
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return Ended::Shutdown;
                }
            }
            n = rx.recv() => match n {
                Some(Ok(n)) => match parse(n.payload()) {
                    Some((folder, head)) => {
                        let _ = commits.send((folder.into(), head));
                    }
                    None => tracing::warn!("a notification on {CHANNEL} that is not FOLDER HEAD: {:?}", n.payload()),
                },
                Some(Err(e)) => return lost(e, true),
                None => return Ended::Lost("the connection closed".into(), true),
            },
        }
    }
}

/// `FOLDER HEAD` (folder names have no spaces).
fn parse(payload: &str) -> Option<(&str, u64)> {
    let (folder, head) = payload.rsplit_once(' ')?;
    Some((folder, head.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_a_folder_and_its_head() {
        assert_eq!(parse("docs 42"), Some(("docs", 42)));
        assert_eq!(parse("docs"), None);
        assert_eq!(parse("docs x"), None);
    }
}
