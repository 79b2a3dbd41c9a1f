//! Changes streams: the journal since a cursor, then each new commit as it happens.

use std::sync::Arc;

use lbsync_proto::{Entry, pb};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::authz::{Need, Who};
use crate::error::{Result, status};
use crate::folders::Backlog;
use crate::gate::Gates;
use crate::meta::Folders;

use super::*;

/// A Changes message carries at most this many entries.
const CHANGES_PER_MESSAGE: usize = 512;
/// A replay from far behind reads the folder's current entries this many at a time.
const SCAN_PAGE: usize = CHANGES_PER_MESSAGE;
/// An open Changes stream checks this often that its token is still live and its folder still
/// shared with its user: a revoked token stops a running `watch` within this.
const AUTH_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl SyncService {
    pub(super) async fn changes_rpc(
        &self,
        req: Request<pb::ChangesRequest>,
    ) -> Result<Response<BoxStream<pb::ChangesResponse>>, Status> {
        let who = Who::of(&req);
        let r = req.into_inner();
        let caller = self
            .authz
            .authorize(who, "Changes", &r.folder, Need::Read)
            .await?;
        let folder: Arc<str> = r.folder.into();
        // Subscribe before reading the journal, so no commit falls between the two.
        let mut commits = self.commits.subscribe();
        let folders = self.folders.clone();
        let f = folder.clone();
        let cursor = r.cursor;
        let mark = Wire {
            same_content: r.same_content_entries,
            raw_paths: r.raw_paths,
        };
        let turn = self.gates.enter(&caller.name()).await;
        let (backlog, head) = to_status(blocking(move || folders.backlog(&f, cursor)).await)?;
        drop(turn);
        let (tx, rx) = mpsc::channel(8);
        let mut shutdown = self.shutdown.clone();
        let folders = self.folders.clone();
        let authz = self.authz.clone();
        let (gates, who) = (self.gates.clone(), caller.name());
        tokio::spawn(async move {
            if !send_backlog(
                &tx,
                (&gates, &who),
                &folders,
                &folder,
                backlog,
                (cursor, head),
                (false, mark),
            )
            .await
            {
                return;
            }
            let mut cursor = head;
            // Only a user's token can be revoked or lose its folder.
            let rechecks = caller.scope(&folder).is_some();
            let mut recheck = tokio::time::interval(AUTH_RECHECK);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = recheck.tick(), if rechecks => {
                        if let Err(s) = authz.recheck(&caller, "Changes", &folder).await {
                            let _ = tx.send(Err(s)).await;
                            return;
                        }
                        continue;
                    }
                    _ = shutdown.changed() => {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down: reconnect in a moment"))).await;
                        return;
                    }
                    () = tx.closed() => return,
                    ev = commits.recv() => match ev {
                        Ok((f, seq)) if f == folder && seq > cursor => {}
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
                let (fs, f) = (folders.clone(), folder.clone());
                match blocking(move || fs.backlog(&f, cursor)).await {
                    Ok((backlog, head)) => {
                        if !send_backlog(
                            &tx,
                            (&gates, &who),
                            &folders,
                            &folder,
                            backlog,
                            (cursor, head),
                            (true, mark),
                        )
                        .await
                        {
                            return;
                        }
                        cursor = head;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(status(&e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends the changes after `cursor` up to `head` (`(cursor, head)`). A compacted journal goes as it is; a scan goes
/// page by page ([`SCAN_PAGE`] entries read at a time, so memory stays bounded however large
/// the folder), every message but the last carrying the starting `cursor`: a client that stops
/// part way has seen nothing it could resume after. With `quiet`, no changes send nothing; with
/// `mark`, entries whose content is their previous version's go as such (see [`to_wire`]).
/// False when the client has gone or the read failed (the error is sent).
async fn send_backlog(
    tx: &mpsc::Sender<Result<pb::ChangesResponse, Status>>,
    turns: (&Gates, &str),
    folders: &Folders,
    folder: &Arc<str>,
    backlog: Backlog,
    (cursor, head): (u64, u64),
    (quiet, mark): (bool, Wire),
) -> bool {
    let (entries, sent) = match backlog {
        Backlog::Compacted(entries) => (entries, false),
        Backlog::Scan => {
            let mut after: Option<Vec<u8>> = None;
            let mut sent = false;
            loop {
                let (fs, f, a) = (folders.clone(), folder.clone(), after.take());
                // A turn of the caller's per page read, none while the client reads it.
                let turn = turns.0.enter(turns.1).await;
                let page =
                    blocking(move || fs.scan_page(&f, cursor, head, a.as_deref(), SCAN_PAGE)).await;
                drop(turn);
                let (entries, next) = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(status(&e))).await;
                        return false;
                    }
                };
                let Some(next) = next else {
                    break (entries, sent);
                };
                if !entries.is_empty() {
                    sent = true;
                    let Some(expired_seq) = expired_seq(tx, folders, folder).await else {
                        return false;
                    };
                    let msg = pb::ChangesResponse {
                        entries: to_wire(folders, folder, entries, mark).await,
                        cursor,
                        caught_up: false,
                        expired_seq,
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return false;
                    }
                }
                after = Some(next);
            }
        }
    };
    if quiet && !sent && entries.is_empty() {
        return true;
    }
    // Read after the entries: a tombstone forgotten while they were read is covered.
    let Some(expired) = expired_seq(tx, folders, folder).await else {
        return false;
    };
    send_changes(tx, (folders, folder, mark), entries, head, expired).await
}

/// The folder's expiry horizon, for a message about to go; `None` when it could not be read
/// (the error is sent).
async fn expired_seq(
    tx: &mpsc::Sender<Result<pb::ChangesResponse, Status>>,
    folders: &Folders,
    folder: &Arc<str>,
) -> Option<u64> {
    let (fs, f) = (folders.clone(), folder.clone());
    match blocking(move || fs.expired_seq(&f)).await {
        Ok(seq) => Some(seq),
        Err(e) => {
            let _ = tx.send(Err(status(&e))).await;
            None
        }
    }
}

/// Sends entries in messages of at most [`CHANGES_PER_MESSAGE`], the last carrying `head`, each
/// the folder's expiry horizon `expired_seq`. False when the client has gone.
async fn send_changes(
    tx: &mpsc::Sender<Result<pb::ChangesResponse, Status>>,
    (folders, folder, mark): (&Folders, &Arc<str>, Wire),
    entries: Vec<Entry>,
    head: u64,
    expired_seq: u64,
) -> bool {
    let mut batches: Vec<Vec<Entry>> = Vec::new();
    let mut entries = entries.into_iter().peekable();
    while entries.peek().is_some() {
        batches.push(entries.by_ref().take(CHANGES_PER_MESSAGE).collect());
    }
    if batches.is_empty() {
        batches.push(Vec::new());
    }
    let last = batches.len() - 1;
    for (i, batch) in batches.into_iter().enumerate() {
        let cursor = if i == last {
            head
        } else {
            batch.last().map_or(head, |e| e.seq)
        };
        let msg = pb::ChangesResponse {
            entries: to_wire(folders, folder, batch, mark).await,
            cursor,
            caught_up: i == last,
            expired_seq,
        };
        if tx.send(Ok(msg)).await.is_err() {
            return false;
        }
    }
    true
}

/// Entries as they go on the wire. With `mark` (the client asked for `same_content_entries`), a
/// file whose manifest and size are its previous version's (a metadata-only commit, or the same
/// bytes committed again) goes with `same_content_base_ns` (that version's commit time) and no
/// manifest id: the receiver applies it in place. Not in an encrypted folder, whose entries' sealed metadata names the manifest
/// id. A lookup that fails leaves the entry whole. With `raw_paths`, sealed paths go raw.
async fn to_wire(
    folders: &Folders,
    folder: &Arc<str>,
    entries: Vec<Entry>,
    wire: Wire,
) -> Vec<pb::Entry> {
    let (mark, raw) = (wire.same_content, wire.raw_paths);
    let candidate = |e: &Entry| {
        e.kind == lbsync_proto::EntryKind::File
            && !e.deleted
            && e.manifest.is_some()
            && e.version > 1
    };
    let wanted: Vec<Entry> = if mark {
        entries.iter().filter(|e| candidate(e)).cloned().collect()
    } else {
        Vec::new()
    };
    // Per candidate, the previous version's commit time when its content is the same.
    let marks: Vec<i64> = if wanted.is_empty() {
        Vec::new()
    } else {
        let (fs, f) = (folders.clone(), folder.clone());
        blocking(move || {
            if fs.encrypted(&f).unwrap_or(true) {
                return Ok(Vec::new());
            }
            Ok(wanted
                .iter()
                .map(|e| {
                    fs.version(&f, &e.path, e.version - 1)
                        .ok()
                        .flatten()
                        .filter(|p| {
                            !p.deleted
                                && p.kind == e.kind
                                && p.manifest == e.manifest
                                && p.size == e.size
                        })
                        .map_or(0, |p| p.committed_ns)
                })
                .collect())
        })
        .await
        .unwrap_or_default()
    };
    let mut marks = marks.into_iter();
    entries
        .into_iter()
        .map(|e| {
            let base_ns = if mark && candidate(&e) {
                marks.next().unwrap_or(0)
            } else {
                0
            };
            let mut wire = pb::Entry::from(e);
            if base_ns != 0 {
                wire.same_content_base_ns = base_ns;
                wire.manifest_id = Default::default();
            }
            wire
        })
        .map(|e| if raw { e.with_raw_path() } else { e })
        .collect()
}

/// How a Changes stream's entries go: what the request asked for.
#[derive(Clone, Copy, Debug)]
struct Wire {
    /// `ChangesRequest.same_content_entries`.
    same_content: bool,
    /// `ChangesRequest.raw_paths`: sealed paths raw.
    raw_paths: bool,
}
