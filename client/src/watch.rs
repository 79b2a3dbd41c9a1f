//! `watch`: a full sync, then real-time sync in both directions until stopped.
//!
//! Local changes come from `notify` (inotify on Linux, recursive, so directories created later are
//! watched too). Events are coalesced until the tree has been quiet for the debounce period, longer
//! when something was removed, so that a delete followed by a create of the same content (a move,
//! an editor's save-by-rename) lands in one sync and is seen as what it is. Remote changes arrive on
//! the server's Changes stream (pushed, not polled). Either wakes one reconciliation (the same as
//! `sync`); what the client itself just wrote matches its synced state, so it is not sent back.
//!
//! Offline, edits simply stay on disk and the state keeps what was last synced, so nothing is lost,
//! not even across a restart; the client retries with capped, jittered exponential backoff and
//! reconciles on reconnect. If the watcher fails (inotify limit, queue overflow), the client says so
//! and rescans periodically instead.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lbsync_proto::pb;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::engine::{SyncOptions, Syncer};
use crate::error::{Error, Result};
use crate::local::{fingerprint, scan, unchanged};
use crate::state::{STATE_DIR, StateStore};

/// How `watch` behaves.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Quiet period before local changes are synced.
    pub debounce: Duration,
    /// Full rescan period (a safety net; also the fallback period when the watcher fails, capped
    /// at 30 s).
    pub rescan_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(75),
            rescan_interval: Duration::from_secs(3600),
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const WATCHER_FAILED_RESCAN: Duration = Duration::from_secs(30);

/// What the watcher reports.
enum Local {
    /// Something changed; `removal` if a path went away.
    Changed { removal: bool },
    /// The watcher lost events or failed: rescan.
    Lost(String),
}

fn start_watcher(
    root: &Path,
    tx: mpsc::Sender<Local>,
) -> std::result::Result<notify::RecommendedWatcher, notify::Error> {
    use notify::Watcher;
    let state_dir = root.join(STATE_DIR);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let msg = match res {
            Ok(ev) if ev.need_rescan() => Local::Lost("the event queue overflowed".into()),
            Ok(ev) => {
                if ev.paths.iter().all(|p| p.starts_with(&state_dir)) || ev.kind.is_access() {
                    return;
                }
                Local::Changed {
                    removal: ev.kind.is_remove()
                        || matches!(
                            ev.kind,
                            notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                        ),
                }
            }
            Err(e) => Local::Lost(watcher_error(&e)),
        };
        let _ = tx.blocking_send(msg);
    })?;
    watcher.watch(root, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}

fn watcher_error(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => "the inotify watch limit is reached; raise it with \
            `sudo sysctl fs.inotify.max_user_watches=1048576` (and in /etc/sysctl.conf)"
            .into(),
        _ => format!("the file watcher failed: {e}"),
    }
}

/// Whether every pushed entry is already what the state holds (our own commits coming back).
fn all_known(state: &StateStore, remote: &crate::remote::Remote, entries: &[pb::Entry]) -> bool {
    entries.iter().all(|e| match remote.open_entry(e.clone()) {
        Ok(e) => match state.state.files.get(e.path.as_str()) {
            Some(s) => s.version == e.version,
            None => e.deleted,
        },
        Err(_) => false,
    })
}

/// Local paths that differ from the synced state: what would go out on reconnect.
fn queued(root: &Path) -> usize {
    let (Ok(state), Ok(local)) = (StateStore::load(root), scan(root)) else {
        return 0;
    };
    let changed = local
        .files
        .iter()
        .filter(|(p, fp)| {
            state
                .state
                .files
                .get(p.as_str())
                .is_none_or(|s| !unchanged(fp, &s.local))
        })
        .count();
    let gone = state
        .state
        .files
        .keys()
        .filter(|p| fingerprint(&root.join(p)).is_none())
        .count();
    changed + gone
}

/// The folder is stopped (moved away, unplugged, its marker gone): says so loudly once, then
/// waits for a local event or a few seconds before looking again. True if shut down meanwhile.
async fn wait_while_stopped(
    stopped: &mut Option<String>,
    e: &Error,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    rx: &mut mpsc::Receiver<Local>,
) -> bool {
    let msg = e.to_string();
    if stopped.as_deref() != Some(msg.as_str()) {
        tracing::error!("{msg}");
        *stopped = Some(msg);
    }
    let retry = tokio::time::sleep(STOPPED_RECHECK);
    tokio::pin!(retry);
    loop {
        tokio::select! {
            () = shutdown.as_mut() => return true,
            () = &mut retry => return false,
            ev = rx.recv() => if ev.is_none() {
                (&mut retry).await;
                return false;
            },
        }
    }
}

/// How often a stopped folder is looked at again.
const STOPPED_RECHECK: Duration = Duration::from_secs(2);

/// Syncs `root` now and then keeps it in step with the server until `shutdown` resolves.
pub async fn watch(
    root: &Path,
    opts: &SyncOptions,
    wopts: &WatchOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let root: PathBuf = root.to_path_buf();
    // One process per folder, for as long as this watch runs (across reconnects too).
    let lock = std::sync::Arc::new(crate::state::FolderLock::acquire(
        &root,
        Duration::from_secs(3),
    )?);
    let (tx, mut rx) = mpsc::channel::<Local>(4096);
    let mut rescan_every = wopts.rescan_interval;
    let _watcher = match start_watcher(&root, tx) {
        Ok(w) => Some(w),
        Err(e) => {
            rescan_every = rescan_every.min(WATCHER_FAILED_RESCAN);
            warn!(
                "{}; rescanning every {}s instead",
                watcher_error(&e),
                rescan_every.as_secs()
            );
            None
        }
    };
    tokio::pin!(shutdown);
    let mut syncer: Option<Syncer> = None;
    let mut changes: Option<tonic::Streaming<pb::ChangesResponse>> = None;
    let mut backoff = BACKOFF_MIN;
    let mut offline_since: Option<Instant> = None;
    let mut due: Option<Instant> = Some(Instant::now());
    let mut next_rescan = Instant::now() + rescan_every;
    let mut events_closed = false;
    let mut stopped: Option<String> = None;
    // The marker of the folder this watch started on: a reconnect must find the same folder
    // (an unmounted disk leaves an empty directory that would otherwise look like a new one).
    let mut marker: Option<String> = None;
    'run: loop {
        // Connect when needed.
        if syncer.is_none() {
            let opened = Syncer::open_locked(&root, opts, lock.clone())
                .await
                .and_then(|s| match &marker {
                    Some(m) if *m != s.state.state.marker => Err(Error::FolderStopped {
                        root: root.clone(),
                        reason: "its .lbsync/ is not the one this watch started with (an \
                                 unmounted disk? another folder put in its place?)"
                            .into(),
                    }),
                    _ => Ok(s),
                });
            match opened {
                Ok(s) => {
                    marker.get_or_insert_with(|| s.state.state.marker.clone());
                    if offline_since.take().is_some() {
                        info!("back online");
                    }
                    // The backoff is reset once the change stream is open too.
                    syncer = Some(s);
                    due = Some(Instant::now());
                }
                Err(e) if e.is_offline() => {
                    if offline_since.is_none() {
                        offline_since = Some(Instant::now());
                        warn!("offline: {e}");
                    }
                    let n = queued(&root);
                    info!(
                        "offline: {n} {} queued; retrying in {:.1}s",
                        if n == 1 { "change" } else { "changes" },
                        backoff.as_secs_f64()
                    );
                    let jitter = rand::rng().random_range(0.8..1.2);
                    let retry_at = Instant::now() + backoff.mul_f64(jitter);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    // Local changes stay queued on disk and go out with the first sync after
                    // the reconnect; they must not hurry the retries (each early retry would
                    // double the backoff, and a busy folder would push it to the cap).
                    loop {
                        tokio::select! {
                            () = &mut shutdown => break 'run,
                            () = sleep_until(retry_at) => break,
                            ev = rx.recv() => if ev.is_none() {
                                sleep_until(retry_at).await;
                                break;
                            },
                        }
                    }
                    continue;
                }
                Err(e @ Error::FolderStopped { .. }) => {
                    if wait_while_stopped(&mut stopped, &e, &mut shutdown, &mut rx).await {
                        break 'run;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        let s = syncer.as_mut().expect("connected above");

        // Sync when something is due.
        if due.is_some_and(|d| d <= Instant::now()) {
            due = None;
            match s.sync().await {
                Ok(report) => {
                    if stopped.take().is_some() {
                        info!("{} is back: syncing again", root.display());
                    }
                    if !report.pending.is_empty() {
                        // Something still being written: look again once it has settled.
                        due = Some(Instant::now() + wopts.debounce * 4);
                    } else if let Some(at) = s.next_retry() {
                        // A path that could not be applied: try it when its backoff ends.
                        due = Some(at);
                    }
                }
                Err(e @ Error::FolderStopped { .. }) => {
                    if wait_while_stopped(&mut stopped, &e, &mut shutdown, &mut rx).await {
                        break 'run;
                    }
                    due = Some(Instant::now());
                    continue;
                }
                Err(e) if e.is_offline() => {
                    warn!("lost the server: {e}");
                    offline_since = Some(Instant::now());
                    syncer = None;
                    changes = None;
                    continue;
                }
                // A refused token or folder is not fixed by waiting: stop and say why.
                Err(e) if e.is_denied() => return Err(e),
                Err(e) => warn!("sync failed: {e}; retrying"),
            }
            if changes.is_none() {
                let cursor = s.state.state.cursor;
                match s.remote.follow(cursor).await {
                    Ok(stream) => {
                        changes = Some(stream);
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) if e.is_denied() => return Err(e),
                    Err(e) => {
                        warn!(
                            "cannot follow the server's changes: {e}; retrying in {:.1}s",
                            backoff.as_secs_f64()
                        );
                        syncer = None;
                        offline_since = Some(Instant::now());
                        let wait = backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        tokio::select! {
                            () = &mut shutdown => break 'run,
                            () = tokio::time::sleep(wait) => {}
                        }
                        continue;
                    }
                }
            }
        }

        let stream = changes.as_mut().expect("opened after the first sync");
        let sleep_target = due.unwrap_or(next_rescan).min(next_rescan);
        tokio::select! {
            () = &mut shutdown => break,
            () = sleep_until(sleep_target) => {
                if Instant::now() >= next_rescan {
                    next_rescan = Instant::now() + rescan_every;
                    due = Some(Instant::now());
                }
            }
            ev = rx.recv(), if !events_closed => match ev {
                Some(Local::Changed { removal }) => {
                    // Hold deletions a little longer: a create of the same content may follow.
                    let quiet = if removal { wopts.debounce * 3 } else { wopts.debounce };
                    let at = Instant::now() + quiet;
                    due = Some(due.map_or(at, |d| d.max(at)));
                }
                Some(Local::Lost(why)) => {
                    warn!("{why}; rescanning");
                    due = Some(Instant::now());
                }
                // The watcher is gone (it failed to start): rescans carry on alone.
                None => events_closed = true,
            },
            msg = stream.message() => match msg {
                Ok(Some(m)) => {
                    if !m.entries.is_empty() && !all_known(&s.state, &s.remote, &m.entries) {
                        due = Some(Instant::now());
                    }
                }
                // A revoked token or an unshared folder ends the stream: stop and say why.
                Err(status) if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) => {
                    s.state.save()?;
                    return Err(Error::rpc("Changes")(status));
                }
                Ok(None) | Err(_) => {
                    warn!("the server's change stream ended; reconnecting");
                    changes = None;
                    syncer = None;
                    offline_since = Some(Instant::now());
                }
            },
        }
    }
    if let Some(s) = syncer.as_mut() {
        s.state.save()?;
    }
    info!("stopped; state saved");
    Ok(())
}
