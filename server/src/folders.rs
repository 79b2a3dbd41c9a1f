//! Folder metadata in the store's sled database: current entries, history, change journal.
//!
//! Trees, per folder `F`:
//! - `folder/F/entries`: path → the path's current entry;
//! - `folder/F/history`: path, NUL, u64 BE version → that version's entry;
//! - `folder/F/journal`: u64 BE seq → path, NUL, u64 BE version; at most one record a path,
//!   its latest commit's (a commit drops the path's previous record in its transaction, so the
//!   journal is as long as the folder has paths, however many commits it took; a journal written
//!   before that is rewritten so by [`FolderMeta::compact_journal`]);
//! - and in the shared tree `folders`: F → u64 BE journal head (the last seq);
//! - in the shared tree `folder_expired`: F → u64 BE expiry horizon, the highest seq of a
//!   tombstone [`FolderMeta::expire_tombstones`] forgot (absent: 0, none). A client whose cursor is
//!   below it may have missed a deletion the folder no longer shows, and re-scans;
//! - in the shared tree `folder_keys`, for an end-to-end encrypted folder only: F → its wrapped
//!   keys, an encoded `lbsync.v1.FolderKeys` (generation >= 1). A folder without a record is
//!   plain; a folder with one never goes back to plain.
//!
//! Entries are stored as encoded `lbsync.v1.Entry` protobuf messages (additive, versionable: a
//! record written before a field existed reads as that field's default, e.g. no `sealed`). A
//! commit updates all four in one sled transaction, which also reads the folder's keys record
//! (so a commit checked as plain cannot land in a folder made encrypted meanwhile): either the
//! new version, its history record, its journal record and the new head are all visible, or
//! none is. A batch of commits goes in
//! transactions of up to [`GROUP_TXN_COMMITS`] commits and one flush (group commit,
//! [`FolderMeta::commit_batch`]); concurrent batches share their flushes (`GroupFlush`).
//!
//! A transaction is visible to readers the moment it ends, before the flush that makes it durable.
//! Nothing read leaves the server before that flush: a reader that may have seen a commit still
//! being flushed flushes too (see `SledFolders::settle`). Otherwise a client could download a
//! version that a crash then takes back, and never hear that it is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use lbsync_proto::{CommitOutcome, Entry, SyncPath, pb};
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::error::{Error, Result};
use crate::meta::FolderMeta;

/// Most commits in one sled transaction of a group commit. A sled transaction holds sled's
/// global write lock while it applies its writes (every other writer of the store waits), and
/// keeps them in memory until then: past about a thousand commits a transaction saves no time.
pub const GROUP_TXN_COMMITS: usize = 1024;

/// How far behind a cursor may be before a replay reads the current entries instead of the journal.
pub const JOURNAL_SCAN_LIMIT: u64 = 4096;

/// What a replay from a cursor reads: see [`FolderMeta::backlog`].
#[derive(Debug)]
pub enum Backlog {
    /// The changes, compacted from the journal, in seq order.
    Compacted(Vec<Entry>),
    /// Too far behind for the journal: page through the current entries.
    Scan,
}

/// The folders of one store, in its sled database.
#[derive(Clone)]
pub struct SledFolders {
    db: sled::Db,
    heads: sled::Tree,
    /// Encrypted folders' keys: see the module's docs.
    keys: sled::Tree,
    /// Each folder's expiry horizon: see the module's docs.
    expired: sled::Tree,
    /// Commits between the start of their transaction and the end of their flush.
    flushing: Arc<AtomicUsize>,
    /// One flush for every commit waiting for one.
    group: Arc<GroupFlush>,
}

/// Counts one commit in [`SledFolders::flushing`] while it lives.
struct Flushing<'a>(&'a AtomicUsize);

impl<'a> Flushing<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Flushing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Group flushing: a caller whose writes have ended asks for a flush; if one is running, it waits
/// for the next, which one of the waiters starts and which covers them all. So N concurrent
/// commits cost about two fsyncs, not N. A flush started after a caller's writes ended covers
/// them (sled's flush makes every write before it durable).
#[derive(Default)]
pub(crate) struct GroupFlush {
    state: Mutex<FlushState>,
    done: Condvar,
}

#[derive(Default)]
struct FlushState {
    /// Tickets handed out: the next caller's.
    next: u64,
    /// Every ticket below this is covered by a finished flush.
    covered: u64,
    /// A flush is running.
    running: bool,
}

impl GroupFlush {
    /// Returns once a flush that started after this call did (this thread's writes are durable).
    pub(crate) fn flush(&self, db: &sled::Db) -> Result<()> {
        self.flush_with(|| db.flush().map(drop).map_err(Error::from))
    }

    fn flush_with(&self, flush: impl Fn() -> Result<()>) -> Result<()> {
        fn lock(m: &Mutex<FlushState>) -> std::sync::MutexGuard<'_, FlushState> {
            m.lock().unwrap_or_else(|p| p.into_inner())
        }
        let mut st = lock(&self.state);
        let ticket = st.next;
        st.next += 1;
        loop {
            if st.covered > ticket {
                return Ok(());
            }
            if !st.running {
                st.running = true;
                let upto = st.next;
                drop(st);
                let res = flush();
                let mut st = lock(&self.state);
                st.running = false;
                if res.is_ok() {
                    st.covered = st.covered.max(upto);
                }
                self.done.notify_all();
                // On failure, a waiter tries again itself.
                return res;
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct Trees {
    entries: sled::Tree,
    history: sled::Tree,
    journal: sled::Tree,
}

/// Checks a folder name: 1–255 characters of `A-Z a-z 0-9 . _ -`, not starting with a dot.
pub fn check_folder_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "folder name {name:?} is not allowed: use 1-255 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

fn history_key(path: &SyncPath, version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(path.as_str().len() + 9);
    k.extend_from_slice(path.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn history_prefix(path: &SyncPath) -> Vec<u8> {
    let mut k = path.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

pub(crate) fn encode(e: &Entry) -> Vec<u8> {
    pb::Entry::from(e.clone()).encode_to_vec()
}

pub(crate) fn decode(b: &[u8]) -> Result<Entry> {
    decode_listed(b)?.ok_or_else(|| Error::Metadata("entry is inside .lbsync/".into()))
}

/// An entry met while walking a folder's trees; `None` for one inside `.lbsync/`, which a server
/// from before such paths were refused may have stored: it is passed over, never served.
pub(crate) fn decode_listed(b: &[u8]) -> Result<Option<Entry>> {
    let e = pb::Entry::decode(b)
        .map_err(|err| Error::Metadata(format!("entry does not decode: {err}")))?;
    match Entry::try_from(e) {
        Ok(e) => Ok(Some(e)),
        Err(lbsync_proto::ConvertError::Path(lbsync_proto::PathError::Reserved(_))) => Ok(None),
        Err(err) => Err(Error::Metadata(format!("entry is invalid: {err}"))),
    }
}

/// The path a journal record names (`None` for a record without its NUL).
fn journal_path(rec: &[u8]) -> Option<&[u8]> {
    rec.iter().position(|&b| b == 0).map(|split| &rec[..split])
}

/// A stored entry's seq, deletion flag and commit time, read without the path checks of
/// [`decode_listed`] (maintenance passes over every record, whatever its path).
fn raw_meta(b: &[u8]) -> Result<(u64, bool, i64)> {
    let e = pb::Entry::decode(b)
        .map_err(|err| Error::Metadata(format!("entry does not decode: {err}")))?;
    Ok((e.seq, e.deleted, e.committed_ns))
}

fn be_u64(b: &[u8]) -> u64 {
    b.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// Now, in Unix nanoseconds (the clock commit times are taken from).
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl SledFolders {
    /// The folders kept in `db`.
    pub fn open(db: &sled::Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            heads: db.open_tree("folders")?,
            keys: db.open_tree("folder_keys")?,
            expired: db.open_tree("folder_expired")?,
            flushing: Arc::new(AtomicUsize::new(0)),
            group: Arc::new(GroupFlush::default()),
        })
    }

    /// Makes what this thread has read durable before it is shown to anyone: if a commit may be
    /// between its transaction and the end of its flush, flushes (which covers every transaction
    /// that has ended). Cheap when no commit is in flight.
    fn settle(&self) -> Result<()> {
        if self.flushing.load(Ordering::SeqCst) > 0 {
            self.group.flush(&self.db)?;
        }
        Ok(())
    }

    fn trees(&self, folder: &str) -> Result<Trees> {
        Ok(Trees {
            entries: self.db.open_tree(format!("folder/{folder}/entries"))?,
            history: self.db.open_tree(format!("folder/{folder}/history"))?,
            journal: self.db.open_tree(format!("folder/{folder}/journal"))?,
        })
    }

    /// The folder's keys as stored: generation 0 and none for a plain folder (or one that does
    /// not exist: see [`FolderMeta::keys`] for the checked form).
    fn stored_keys(tree: &sled::Tree, folder: &str) -> Result<pb::FolderKeys> {
        match tree.get(folder)? {
            Some(v) => pb::FolderKeys::decode(&*v).map_err(|err| {
                Error::Metadata(format!("the keys of folder {folder} do not decode: {err}"))
            }),
            None => Ok(pb::FolderKeys::default()),
        }
    }
}

impl FolderMeta for SledFolders {
    /// Creates the folder if it does not exist; returns its journal head.
    fn ensure(&self, folder: &str) -> Result<u64> {
        check_folder_name(folder)?;
        let head = self.heads.fetch_and_update(folder, |old| {
            Some(old.map_or_else(|| 0u64.to_be_bytes().to_vec(), |v| v.to_vec()))
        })?;
        self.settle()?;
        Ok(head.map_or(0, |v| be_u64(&v)))
    }

    /// The folder's journal head, or `NotFound` if there is no such folder.
    fn head(&self, folder: &str) -> Result<u64> {
        self.heads
            .get(folder)?
            .map(|v| be_u64(&v))
            .ok_or_else(|| Error::NotFound(format!("no folder {folder:?} on this server")))
    }

    /// All folder names.
    fn names(&self) -> Result<Vec<String>> {
        self.heads
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// The folder's wrapped keys (generation 0 and none when it is plain), or `NotFound` if
    /// there is no such folder.
    fn keys(&self, folder: &str) -> Result<pb::FolderKeys> {
        self.head(folder)?;
        Self::stored_keys(&self.keys, folder)
    }

    /// Whether the folder is end-to-end encrypted (false for a folder that does not exist).
    fn encrypted(&self, folder: &str) -> Result<bool> {
        Ok(self.keys.contains_key(folder)?)
    }

    /// How many folders are encrypted.
    fn encrypted_count(&self) -> usize {
        self.keys.len()
    }

    /// Replaces the folder's wrapped keys if they are at generation `expected` (else
    /// [`Error::Aborted`]); `expected` 0 makes a plain folder encrypted, refused
    /// ([`Error::Precondition`]) once it has any entry. The check and the write are one sled
    /// transaction with the commits' (which read the keys record): of two devices making a
    /// folder encrypted at once, or of a commit in the clear and the change to encrypted, one
    /// wins. Durable when it returns. `wrapped` must have been checked
    /// ([`crate::sealed::check_wrapped_keys`]).
    fn set_keys(
        &self,
        folder: &str,
        expected: u64,
        wrapped: Vec<pb::WrappedKey>,
    ) -> Result<pb::FolderKeys> {
        let folder_key = folder.as_bytes();
        let res = (&self.heads, &self.keys).transaction(|(heads, keys)| {
            let abort = |e: Error| ConflictableTransactionError::Abort(e);
            let Some(head) = heads.get(folder_key)? else {
                return Err(abort(Error::NotFound(format!(
                    "no folder {folder:?} on this server: open it (Handshake) first"
                ))));
            };
            let current = match keys.get(folder_key)? {
                Some(v) => pb::FolderKeys::decode(&*v).map_err(|err| {
                    abort(Error::Metadata(format!(
                        "the keys of folder {folder} do not decode: {err}"
                    )))
                })?,
                None => pb::FolderKeys::default(),
            };
            if current.generation != expected {
                return Err(abort(Error::Aborted(format!(
                    "the keys of folder {folder} are at generation {}, not {expected}: another \
                     device changed them; read them again (GetFolderKeys) and retry",
                    current.generation
                ))));
            }
            if expected == 0 && be_u64(&head) > 0 {
                // Counted below, outside the transaction.
                return Err(abort(Error::Precondition(String::new())));
            }
            let new = pb::FolderKeys {
                generation: current.generation + 1,
                wrapped: wrapped.clone(),
            };
            keys.insert(folder_key, new.encode_to_vec())?;
            Ok(new)
        });
        let new = match res {
            Ok(new) => new,
            Err(TransactionError::Abort(Error::Precondition(_))) => {
                let n = self.trees(folder)?.entries.len();
                return Err(Error::Precondition(format!(
                    "folder {folder} already holds {} in the clear: an encrypted folder must \
                     start empty; make a new folder for encrypted data",
                    lbsync_cli::units::count(n as u64, "entry")
                )));
            }
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        self.group.flush(&self.db)?;
        Ok(new)
    }

    /// The path's current entry.
    fn current(&self, folder: &str, path: &SyncPath) -> Result<Option<Entry>> {
        self.head(folder)?;
        let entry = self.trees(folder)?.entries.get(path.as_str())?;
        self.settle()?;
        entry.map(|v| decode(&v)).transpose()
    }

    /// [`FolderMeta::commit_batch`] of entries checked for a folder that is `encrypted` (or plain):
    /// a transaction that finds the folder otherwise (made encrypted since the checks) fails
    /// with [`Error::Precondition`], and nothing of it is stored.
    fn commit_batch_checked(
        &self,
        folder: &str,
        commits: Vec<(Entry, u64)>,
        encrypted: bool,
    ) -> Result<(Vec<CommitOutcome>, Option<Error>)> {
        self.head(folder)?;
        let t = self.trees(folder)?;
        let folder_key = folder.as_bytes().to_vec();
        let now = now_ns();
        let _flushing = Flushing::start(&self.flushing);
        let mut outcomes = Vec::with_capacity(commits.len());
        let mut failed = None;
        for group in commits.chunks(GROUP_TXN_COMMITS) {
            let res = (&t.entries, &t.history, &t.journal, &self.heads, &self.keys).transaction(
                |(entries, history, journal, heads, keys)| {
                    if keys.get(&folder_key)?.is_some() != encrypted {
                        // A folder only ever becomes encrypted.
                        return Err(ConflictableTransactionError::Abort(
                            crate::meta::made_encrypted(folder),
                        ));
                    }
                    let mut head = heads.get(&folder_key)?.map_or(0, |v| be_u64(&v));
                    let mut out = Vec::with_capacity(group.len());
                    for (entry, base_version) in group {
                        let path_key = entry.path.as_str().as_bytes();
                        // Reads see this transaction's own writes: a path twice in a group
                        // meets its first commit as any later commit would.
                        let current = match entries.get(path_key)? {
                            Some(v) => {
                                Some(decode(&v).map_err(ConflictableTransactionError::Abort)?)
                            }
                            None => None,
                        };
                        let version = match crate::meta::decide(
                            current.as_ref(),
                            entry,
                            *base_version,
                            encrypted,
                        ) {
                            Ok(version) => version,
                            Err(current) => {
                                out.push(CommitOutcome::Conflict(current));
                                continue;
                            }
                        };
                        let mut new = entry.clone();
                        new.committed_ns = now;
                        new.version = version;
                        head += 1;
                        new.seq = head;
                        let bytes = encode(&new);
                        if let Some(c) = &current {
                            // One journal record a path: its previous one goes (a replay shows
                            // only a path's latest entry anyway).
                            let old = c.seq.to_be_bytes();
                            if journal
                                .get(old)?
                                .is_some_and(|rec| journal_path(&rec) == Some(path_key))
                            {
                                journal.remove(&old)?;
                            }
                        }
                        entries.insert(path_key, bytes.as_slice())?;
                        history.insert(history_key(&new.path, new.version), bytes.as_slice())?;
                        let mut jrec = history_prefix(&new.path);
                        jrec.extend_from_slice(&new.version.to_be_bytes());
                        journal.insert(&new.seq.to_be_bytes(), jrec)?;
                        out.push(CommitOutcome::Committed(new));
                    }
                    heads.insert(folder_key.as_slice(), &head.to_be_bytes())?;
                    Ok(out)
                },
            );
            match res {
                Ok(out) => outcomes.extend(out),
                Err(TransactionError::Abort(e)) => {
                    failed = Some(e);
                    break;
                }
                Err(TransactionError::Storage(e)) => {
                    failed = Some(e.into());
                    break;
                }
            }
        }
        // A commit is acknowledged only once it is on disk (sled alone flushes on a timer), and
        // so is the current entry a conflict answer shows.
        self.group.flush(&self.db)?;
        Ok((outcomes, failed))
    }

    /// The changes after `cursor` and the head they bring the caller to. Within
    /// [`JOURNAL_SCAN_LIMIT`] of the head they are read from the journal, compacted to the latest
    /// entry per path, in seq order ([`Backlog::Compacted`], at most that many entries). From
    /// further behind the caller pages through the current entries with [`FolderMeta::scan_page`]
    /// ([`Backlog::Scan`]), so no replay holds a whole folder in memory.
    fn backlog(&self, folder: &str, cursor: u64) -> Result<(Backlog, u64)> {
        let mut head = self.head(folder)?;
        if cursor > head {
            return Err(Error::CursorAhead { cursor, head });
        }
        if head - cursor > JOURNAL_SCAN_LIMIT {
            return Ok((Backlog::Scan, head));
        }
        let t = self.trees(folder)?;
        let mut entries = Vec::new();
        let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
        // A commit while the range is read drops its path's record (at or below the head) and
        // writes one above it: read again up to the new head, so that a replay from 0 lists
        // every path. Under a steady stream of commits, a path missed so is in the next replay.
        for attempt in 0..3 {
            latest.clear();
            for kv in t
                .journal
                .range((cursor + 1).to_be_bytes()..=head.to_be_bytes())
            {
                let (_, rec) = kv?;
                let Some(split) = rec.iter().position(|&b| b == 0) else {
                    return Err(Error::Metadata("journal record without a version".into()));
                };
                let version = be_u64(&rec[split + 1..]);
                let slot = latest.entry(rec[..split].to_vec()).or_default();
                *slot = (*slot).max(version);
            }
            let now = self.head(folder)?;
            if now == head || attempt == 2 || now - cursor > JOURNAL_SCAN_LIMIT {
                break;
            }
            head = now;
        }
        for (path, version) in latest {
            let mut key = path;
            key.push(0);
            key.extend_from_slice(&version.to_be_bytes());
            if let Some(v) = t.history.get(&key)? {
                entries.extend(decode_listed(&v)?);
            } else if let Some(v) = t.entries.get(&key[..key.len() - 9])? {
                // The version was pruned from history: the current entry is newer anyway.
                entries.extend(decode_listed(&v)?);
            }
        }
        // Commits that landed while we read are delivered by their own notification.
        entries.retain(|e| e.seq <= head);
        entries.sort_by_key(|e| e.seq);
        self.settle()?;
        Ok((Backlog::Compacted(entries), head))
    }

    /// One page of a [`Backlog::Scan`]: of the next `limit` current entries after the path key
    /// `after` (from the first with `None`), those changed after `cursor` and up to `head`, in
    /// path order; and the key to continue after, `None` at the end. Commits past `head` are
    /// left to their own notification.
    fn scan_page(
        &self,
        folder: &str,
        cursor: u64,
        head: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<Vec<u8>>)> {
        use std::ops::Bound;
        let t = self.trees(folder)?;
        let from = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        let mut entries = Vec::new();
        let mut last = None;
        let mut read = 0;
        for kv in t.entries.range::<Vec<u8>, _>((from, Bound::Unbounded)) {
            let (k, v) = kv?;
            read += 1;
            if let Some(e) = decode_listed(&v)?.filter(|e| e.seq > cursor && e.seq <= head) {
                entries.push(e);
            }
            last = Some(k.to_vec());
            if read == limit {
                break;
            }
        }
        self.settle()?;
        Ok((entries, if read == limit { last } else { None }))
    }

    /// The retained versions of a path, newest first, at most `max` of them; and whether there
    /// are older ones.
    fn history(&self, folder: &str, path: &SyncPath, max: usize) -> Result<(Vec<Entry>, bool)> {
        self.head(folder)?;
        let mut versions = self
            .trees(folder)?
            .history
            .scan_prefix(history_prefix(path))
            .rev();
        let out = versions
            .by_ref()
            .take(max)
            .map(|kv| decode(&kv?.1))
            .collect::<Result<Vec<_>>>()?;
        let more = versions.next().is_some();
        self.settle()?;
        Ok((out, more))
    }

    /// One retained version of a path.
    fn version(&self, folder: &str, path: &SyncPath, version: u64) -> Result<Option<Entry>> {
        self.head(folder)?;
        let entry = self
            .trees(folder)?
            .history
            .get(history_key(path, version))?;
        self.settle()?;
        entry.map(|v| decode(&v)).transpose()
    }

    /// Every current entry of a folder.
    fn current_entries(&self, folder: &str) -> Result<Vec<Entry>> {
        self.trees(folder)?
            .entries
            .iter()
            .filter_map(|kv| match kv {
                Ok((_, v)) => decode_listed(&v).transpose(),
                Err(e) => Some(Err(e.into())),
            })
            .collect()
    }

    /// Drops history versions that are neither among the newest `keep_versions` of their path nor
    /// younger than `keep_ns`, nor current. Returns (kept, pruned) and calls `keep` with each kept
    /// entry. With `dry_run`, nothing is deleted.
    fn prune_history(
        &self,
        folder: &str,
        keep_versions: usize,
        keep_ns: i64,
        dry_run: bool,
        keep: &mut dyn FnMut(&Entry),
    ) -> Result<(u64, u64)> {
        let t = self.trees(folder)?;
        let now = now_ns();
        let (mut kept, mut pruned) = (0u64, 0u64);
        let mut batch = sled::Batch::default();
        let mut path_versions: Vec<(Vec<u8>, Entry)> = Vec::new();
        let mut flush = |versions: &mut Vec<(Vec<u8>, Entry)>, batch: &mut sled::Batch| {
            // Newest first.
            for (i, (key, e)) in versions.iter().rev().enumerate() {
                if i < keep_versions || now.saturating_sub(e.committed_ns) < keep_ns {
                    kept += 1;
                    keep(e);
                } else {
                    pruned += 1;
                    batch.remove(key.as_slice());
                }
            }
            versions.clear();
        };
        for kv in t.history.iter() {
            let (k, v) = kv?;
            let Some(e) = decode_listed(&v)? else {
                continue;
            };
            if path_versions
                .last()
                .is_some_and(|(_, last)| last.path != e.path)
            {
                flush(&mut path_versions, &mut batch);
            }
            path_versions.push((k.to_vec(), e));
        }
        flush(&mut path_versions, &mut batch);
        if !dry_run {
            t.history.apply_batch(batch)?;
        }
        Ok((kept, pruned))
    }

    /// The folder's expiry horizon: the highest seq of a tombstone expired (0: none). A client
    /// whose cursor is below it may have missed a deletion that the folder no longer shows.
    fn expired_seq(&self, folder: &str) -> Result<u64> {
        Ok(self.expired.get(folder)?.map_or(0, |v| be_u64(&v)))
    }

    /// Rewrites a journal written before a commit dropped its path's previous record into one
    /// record a path: a record is kept only if its path's current entry is its commit. Returns
    /// how many records were (with `dry_run`: would be) dropped. Safe beside commits: a record
    /// that is not its path's latest never becomes it again.
    fn compact_journal(&self, folder: &str, dry_run: bool) -> Result<u64> {
        let t = self.trees(folder)?;
        let mut batch = sled::Batch::default();
        let mut dropped = 0u64;
        for kv in t.journal.iter() {
            let (seq, rec) = kv?;
            let current = match journal_path(&rec) {
                Some(path) => t.entries.get(path)?.map(|v| raw_meta(&v)).transpose()?,
                None => None,
            };
            if current.is_none_or(|(cur_seq, _, _)| cur_seq != be_u64(&seq)) {
                dropped += 1;
                batch.remove(seq);
            }
        }
        if !dry_run && dropped > 0 {
            t.journal.apply_batch(batch)?;
            tracing::info!(
                "folder {folder}: compacted its journal to one record a path, dropping {}",
                lbsync_cli::units::count(dropped, "superseded record")
            );
        }
        Ok(dropped)
    }

    /// Forgets the tombstones committed before `cutoff_ns` (Unix nanoseconds): each one's
    /// current entry, journal record and every kept version of its path go, and the folder's
    /// expiry horizon ([`FolderMeta::expired_seq`]) rises to the highest seq forgotten, in the same
    /// transaction. Nothing but a path whose current entry is an old tombstone is touched.
    /// Returns (tombstones expired, the horizon); with `dry_run` what it would be, changing
    /// nothing.
    fn expire_tombstones(&self, folder: &str, cutoff_ns: i64, dry_run: bool) -> Result<(u64, u64)> {
        /// Paths expired in one transaction.
        const PER_TXN: usize = 256;
        let t = self.trees(folder)?;
        let mut horizon = self.expired_seq(folder)?;
        let mut old: Vec<(Vec<u8>, sled::IVec, u64, Vec<sled::IVec>)> = Vec::new();
        let mut expired = 0u64;
        let mut expire = |old: &mut Vec<(Vec<u8>, sled::IVec, u64, Vec<sled::IVec>)>,
                          horizon: &mut u64|
         -> Result<()> {
            if old.is_empty() {
                return Ok(());
            }
            if dry_run {
                expired += old.len() as u64;
                *horizon = old.iter().map(|o| o.2).fold(*horizon, u64::max);
                old.clear();
                return Ok(());
            }
            let folder_key = folder.as_bytes();
            let res = (&t.entries, &t.history, &t.journal, &self.expired).transaction(
                |(entries, history, journal, horizons)| {
                    let mut top = horizons.get(folder_key)?.map_or(0, |v| be_u64(&v));
                    let mut n = 0u64;
                    for (path, seen, seq, versions) in old.iter() {
                        // A commit since the scan made the path live again: it stays.
                        if entries.get(path.as_slice())?.as_ref() != Some(seen) {
                            continue;
                        }
                        entries.remove(path.as_slice())?;
                        let rec_key = seq.to_be_bytes();
                        if journal
                            .get(rec_key)?
                            .is_some_and(|rec| journal_path(&rec) == Some(path.as_slice()))
                        {
                            journal.remove(&rec_key)?;
                        }
                        for v in versions {
                            history.remove(v)?;
                        }
                        top = top.max(*seq);
                        n += 1;
                    }
                    horizons.insert(folder_key, &top.to_be_bytes())?;
                    Ok::<_, ConflictableTransactionError<Error>>((n, top))
                },
            );
            let (n, top) = match res {
                Ok(r) => r,
                Err(TransactionError::Abort(e)) => return Err(e),
                Err(TransactionError::Storage(e)) => return Err(e.into()),
            };
            expired += n;
            *horizon = top;
            old.clear();
            Ok(())
        };
        for kv in t.entries.iter() {
            let (path, v) = kv?;
            let (seq, deleted, committed_ns) = raw_meta(&v)?;
            if !deleted || committed_ns >= cutoff_ns {
                continue;
            }
            let mut prefix = path.to_vec();
            prefix.push(0);
            let versions = t
                .history
                .scan_prefix(&prefix)
                .keys()
                .collect::<std::result::Result<Vec<_>, _>>()?;
            old.push((path.to_vec(), v, seq, versions));
            if old.len() == PER_TXN {
                expire(&mut old, &mut horizon)?;
            }
        }
        expire(&mut old, &mut horizon)?;
        if !dry_run && expired > 0 {
            self.group.flush(&self.db)?;
            tracing::info!(
                "folder {folder}: forgot {} past their retention; clients behind seq {horizon} \
                 re-scan",
                lbsync_cli::units::count(expired, "tombstone")
            );
        }
        Ok((expired, horizon))
    }
}

#[cfg(test)]
impl SledFolders {
    /// Every change after `cursor`, in seq order, and the head: [`FolderMeta::backlog`] and all its
    /// pages at once. For tests and small folders.
    pub fn changes_since(&self, folder: &str, cursor: u64) -> Result<(Vec<Entry>, u64)> {
        match self.backlog(folder, cursor)? {
            (Backlog::Compacted(entries), head) => Ok((entries, head)),
            (Backlog::Scan, head) => {
                let (mut all, mut after) = (Vec::new(), None);
                loop {
                    let (page, next) =
                        self.scan_page(folder, cursor, head, after.as_deref(), 64)?;
                    all.extend(page);
                    match next {
                        Some(k) => after = Some(k),
                        None => break,
                    }
                }
                all.sort_by_key(|e| e.seq);
                Ok((all, head))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server from before `.lbsync/` was refused may have stored entries there: they are
    /// passed over, and the rest of the folder still lists, replays and collects.
    #[test]
    fn entries_inside_the_state_directory_stored_earlier_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let folders = SledFolders::open(&db).unwrap();
        folders.ensure("f").unwrap();
        let dir_entry = |p: &str| Entry::dir(SyncPath::new(p).unwrap(), "d");
        let CommitOutcome::Committed(kept) = folders.commit("f", dir_entry("kept"), 0).unwrap()
        else {
            panic!("conflict")
        };
        let CommitOutcome::Committed(old) = folders.commit("f", dir_entry("old"), 0).unwrap()
        else {
            panic!("conflict")
        };
        // Rewrite "old" as ".lbsync/old" in every tree, as the old server would have stored it.
        let mut raw = pb::Entry::from(old.clone());
        raw.path = bytes::Bytes::from_static(b".lbsync/old");
        let raw = raw.encode_to_vec();
        let t = folders.trees("f").unwrap();
        t.entries.remove("old").unwrap();
        t.entries.insert(".lbsync/old", raw.as_slice()).unwrap();
        t.history.clear().unwrap();
        t.history
            .insert(history_key(&kept.path, 1), encode(&kept))
            .unwrap();
        let mut key = b".lbsync/old\0".to_vec();
        key.extend_from_slice(&1u64.to_be_bytes());
        t.history.insert(key.as_slice(), raw.as_slice()).unwrap();
        let mut jrec = key.clone();
        jrec.truncate(key.len() - 8);
        jrec.extend_from_slice(&1u64.to_be_bytes());
        t.journal.insert(2u64.to_be_bytes(), jrec).unwrap();

        let paths = |es: Vec<Entry>| {
            es.into_iter()
                .map(|e| e.path.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(folders.current_entries("f").unwrap()), ["kept"]);
        assert_eq!(paths(folders.changes_since("f", 0).unwrap().0), ["kept"]);
        let (kept_versions, _) = folders
            .prune_history("f", 10, i64::MAX, true, &mut |_| {})
            .unwrap();
        assert_eq!(kept_versions, 1);
    }

    /// A batch commits in order: a path twice sees its first commit, a stale base conflicts
    /// without stopping the rest, the seqs of the commits that took effect are dense and the
    /// head is the last; past one transaction's worth of commits, the same.
    #[test]
    fn a_group_commit_keeps_each_commits_outcome_and_dense_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let folders = SledFolders::open(&db).unwrap();
        folders.ensure("f").unwrap();
        let e = |p: &str| Entry::dir(SyncPath::new(p).unwrap(), "d");
        folders.commit("f", e("a"), 0).unwrap();
        let mut batch = vec![(e("a"), 1), (e("a"), 2), (e("a"), 1), (e("b"), 0)];
        let n = GROUP_TXN_COMMITS + 10;
        batch.extend((0..n).map(|i| (e(&format!("many/{i}")), 0)));
        let (outcomes, failed) = folders.commit_batch("f", batch).unwrap();
        assert!(failed.is_none());
        assert_eq!(outcomes.len(), n + 4);
        let committed = |o: &CommitOutcome| match o {
            CommitOutcome::Committed(e) => Some((e.version, e.seq)),
            CommitOutcome::Conflict(_) => None,
        };
        assert_eq!(committed(&outcomes[0]), Some((2, 2)));
        assert_eq!(committed(&outcomes[1]), Some((3, 3)));
        let CommitOutcome::Conflict(current) = &outcomes[2] else {
            panic!("a stale base conflicts: {:?}", outcomes[2])
        };
        assert_eq!(current.version, 3);
        assert_eq!(committed(&outcomes[3]), Some((1, 4)));
        let seqs: Vec<u64> = outcomes[3..]
            .iter()
            .map(|o| committed(o).unwrap().1)
            .collect();
        assert_eq!(seqs, (4..4 + n as u64 + 1).collect::<Vec<_>>());
        assert_eq!(folders.head("f").unwrap(), 4 + n as u64);
        let (changes, head) = folders.changes_since("f", 3).unwrap();
        assert_eq!(head, 4 + n as u64);
        assert_eq!(changes.len(), n + 1);
    }

    /// Concurrent callers share flushes, and none returns before a flush that began after its
    /// writes has ended.
    #[test]
    fn group_flush_covers_every_caller_with_fewer_flushes() {
        use std::sync::atomic::AtomicU64;
        let group = Arc::new(GroupFlush::default());
        let writes = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(0));
        let flushes = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (group, writes, durable, flushes) = (
                    group.clone(),
                    writes.clone(),
                    durable.clone(),
                    flushes.clone(),
                );
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let mine = writes.fetch_add(1, Ordering::SeqCst) + 1;
                        group
                            .flush_with(|| {
                                flushes.fetch_add(1, Ordering::SeqCst);
                                let covered = writes.load(Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(3));
                                durable.fetch_max(covered, Ordering::SeqCst);
                                Ok(())
                            })
                            .unwrap();
                        assert!(durable.load(Ordering::SeqCst) >= mine);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let flushes = flushes.load(Ordering::SeqCst);
        assert!(flushes < 80, "{flushes} flushes for 80 callers");
        // A failed flush is reported to its caller and retried by the next.
        let calls = AtomicU64::new(0);
        let fail_once = || {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(Error::Metadata("disk full".into()))
            } else {
                Ok(())
            }
        };
        assert!(group.flush_with(fail_once).is_err());
        group.flush_with(fail_once).unwrap();
    }

    /// From further behind than the journal is read, a replay pages through the current
    /// entries: each page reads at most its limit, and together they hold exactly the latest
    /// entry of every path changed after the cursor and up to the head, as the journal would.
    #[test]
    fn a_replay_from_far_behind_pages_through_the_current_entries() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let folders = SledFolders::open(&db).unwrap();
        folders.ensure("f").unwrap();
        let paths = 300u64;
        let commits = JOURNAL_SCAN_LIMIT + 200;
        let mut latest: HashMap<String, u64> = HashMap::new();
        for i in 0..commits {
            let p = format!("p{:03}", i % paths);
            let version = latest.get(&p).map_or(0, |_| i / paths);
            let e = Entry::dir(SyncPath::new(&p).unwrap(), "d");
            let CommitOutcome::Committed(e) = folders.commit("f", e, version).unwrap() else {
                panic!("conflict at {i}")
            };
            latest.insert(p, e.seq);
        }
        let cursor = 150;
        let (backlog, head) = folders.backlog("f", cursor).unwrap();
        assert!(matches!(backlog, Backlog::Scan), "{backlog:?}");
        assert_eq!(head, commits);
        let (mut after, mut seen) = (None::<Vec<u8>>, Vec::new());
        loop {
            let (page, next) = folders
                .scan_page("f", cursor, head, after.as_deref(), 64)
                .unwrap();
            assert!(page.len() <= 64);
            seen.extend(page.into_iter().map(|e| (e.path.to_string(), e.seq)));
            match next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        seen.sort();
        let mut want: Vec<(String, u64)> =
            latest.into_iter().filter(|(_, s)| *s > cursor).collect();
        want.sort();
        assert_eq!(seen, want);
        // Near the head the journal is read, compacted.
        let (backlog, _) = folders.backlog("f", head - 10).unwrap();
        let Backlog::Compacted(near) = backlog else {
            panic!("near the head the journal is read")
        };
        assert_eq!(near.len(), 10);
    }

    /// A folder for the tests below, with its store's directory.
    fn folder() -> (tempfile::TempDir, SledFolders) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let folders = SledFolders::open(&db).unwrap();
        folders.ensure("f").unwrap();
        (dir, folders)
    }

    /// A deterministic mix of commits over a few paths: new files, edits, deletions and
    /// re-creations. Returns every committed entry, in seq order.
    fn churn(folders: &SledFolders, commits: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut current: HashMap<String, Entry> = HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..commits {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = format!("p{}", x % 7);
            let path = SyncPath::new(&p).unwrap();
            let (entry, base) = match current.get(&p) {
                Some(c) if !c.deleted && x.is_multiple_of(3) => (
                    Entry::tombstone(path, lbsync_proto::EntryKind::Dir, "d"),
                    c.version,
                ),
                Some(c) if c.deleted => (Entry::dir(path, "d"), 0),
                Some(c) => (Entry::dir(path, &format!("d{}", x % 5)), c.version),
                None => (Entry::dir(path, "d"), 0),
            };
            let CommitOutcome::Committed(e) = folders.commit("f", entry, base).unwrap() else {
                panic!("conflict")
            };
            current.insert(p, e.clone());
            out.push(e);
        }
        out
    }

    /// Per path, (version, deleted) of the latest of `commits` at or before `seq`.
    fn state_at(commits: &[Entry], seq: u64) -> BTreeMap<String, (u64, bool)> {
        commits
            .iter()
            .filter(|e| e.seq <= seq)
            .map(|e| (e.path.to_string(), (e.version, e.deleted)))
            .collect()
    }

    /// A replay from `cursor` applied to what a client held at `cursor`.
    fn replayed(
        folders: &SledFolders,
        commits: &[Entry],
        cursor: u64,
    ) -> BTreeMap<String, (u64, bool)> {
        let mut state = state_at(commits, cursor);
        let (changes, _) = folders.changes_since("f", cursor).unwrap();
        let paths: std::collections::BTreeSet<_> = changes.iter().map(|e| &e.path).collect();
        assert_eq!(paths.len(), changes.len(), "one entry a path from {cursor}");
        assert!(changes.windows(2).all(|w| w[0].seq < w[1].seq), "seq order");
        for e in changes {
            assert!(e.seq > cursor);
            state.insert(e.path.to_string(), (e.version, e.deleted));
        }
        state
    }

    use std::collections::BTreeMap;

    /// The journal keeps one record a path whatever the commits, and a replay from any cursor
    /// brings a client that held the folder as of that cursor to the folder's current state.
    #[test]
    fn the_journal_keeps_one_record_a_path_and_every_replay_still_converges() {
        let (_dir, folders) = folder();
        let commits = churn(&folders, 300);
        let t = folders.trees("f").unwrap();
        assert_eq!(t.journal.len(), t.entries.len());
        assert_eq!(t.entries.len(), 7);
        let head = folders.head("f").unwrap();
        assert_eq!(head, 300);
        let now = state_at(&commits, head);
        for cursor in 0..=head {
            assert_eq!(replayed(&folders, &commits, cursor), now, "from {cursor}");
        }
    }

    /// A journal written before commits dropped their path's previous record replays the same
    /// from every cursor once `compact_journal` rewrote it to one record a path.
    #[test]
    fn compacting_an_old_journal_keeps_every_replay() {
        let (_dir, folders) = folder();
        let commits = churn(&folders, 200);
        let t = folders.trees("f").unwrap();
        // The journal as a server from before wrote it: a record a commit.
        for e in &commits {
            let mut rec = history_prefix(&e.path);
            rec.extend_from_slice(&e.version.to_be_bytes());
            t.journal.insert(e.seq.to_be_bytes(), rec).unwrap();
        }
        assert_eq!(t.journal.len(), 200);
        let head = folders.head("f").unwrap();
        let before: Vec<_> = (0..=head)
            .map(|c| folders.changes_since("f", c).unwrap())
            .collect();
        assert_eq!(folders.compact_journal("f", true).unwrap(), 193);
        assert_eq!(t.journal.len(), 200, "a dry run changes nothing");
        assert_eq!(folders.compact_journal("f", false).unwrap(), 193);
        assert_eq!(t.journal.len(), 7);
        assert_eq!(folders.compact_journal("f", false).unwrap(), 0);
        let now = state_at(&commits, head);
        for cursor in 0..=head {
            assert_eq!(
                folders.changes_since("f", cursor).unwrap(),
                before[cursor as usize],
                "from {cursor}"
            );
            assert_eq!(replayed(&folders, &commits, cursor), now, "from {cursor}");
        }
    }

    /// Rewrites the path's current entry and history record as committed `ago` earlier.
    fn backdate(folders: &SledFolders, e: &Entry, ago: std::time::Duration) -> Entry {
        let t = folders.trees("f").unwrap();
        let mut old = e.clone();
        old.committed_ns -= ago.as_nanos() as i64;
        t.entries.insert(e.path.as_str(), encode(&old)).unwrap();
        t.history
            .insert(history_key(&e.path, e.version), encode(&old))
            .unwrap();
        old
    }

    /// Expiry forgets old tombstones only (with all of their path), never a live entry however
    /// old nor a recent tombstone; the horizon is the highest seq forgotten and never goes
    /// down; a dry run changes nothing; the path can be made again from version 1.
    #[test]
    fn expiry_forgets_only_old_tombstones_and_raises_the_horizon() {
        let (_dir, folders) = folder();
        let day = std::time::Duration::from_secs(24 * 3600);
        let d = |p: &str| Entry::dir(SyncPath::new(p).unwrap(), "d");
        let gone = |p: &str| {
            Entry::tombstone(SyncPath::new(p).unwrap(), lbsync_proto::EntryKind::Dir, "d")
        };
        let c = |o: CommitOutcome| match o {
            CommitOutcome::Committed(e) => e,
            CommitOutcome::Conflict(e) => panic!("conflict with {e:?}"),
        };
        for p in ["old-gone", "new-gone", "old-live", "older-gone"] {
            c(folders.commit("f", d(p), 0).unwrap());
        }
        c(folders.commit("f", d("old-gone"), 1).unwrap());
        let older = c(folders.commit("f", gone("older-gone"), 1).unwrap());
        let old = c(folders.commit("f", gone("old-gone"), 2).unwrap());
        let new = c(folders.commit("f", gone("new-gone"), 1).unwrap());
        let live = folders
            .current("f", &SyncPath::new("old-live").unwrap())
            .unwrap()
            .unwrap();
        backdate(&folders, &older, day * 400);
        backdate(&folders, &old, day * 200);
        backdate(&folders, &live, day * 1000);
        let head = folders.head("f").unwrap();
        let cutoff = now_ns() - (day * 180).as_nanos() as i64;

        assert_eq!(
            folders.expire_tombstones("f", cutoff, true).unwrap(),
            (2, old.seq)
        );
        assert_eq!(
            folders.expired_seq("f").unwrap(),
            0,
            "a dry run changes nothing"
        );
        assert_eq!(folders.current_entries("f").unwrap().len(), 4);

        assert_eq!(
            folders.expire_tombstones("f", cutoff, false).unwrap(),
            (2, old.seq)
        );
        assert_eq!(folders.expired_seq("f").unwrap(), old.seq);
        let mut paths: Vec<_> = folders
            .current_entries("f")
            .unwrap()
            .into_iter()
            .map(|e| (e.path.to_string(), e.deleted))
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [("new-gone".into(), true), ("old-live".into(), false)]
        );
        for p in ["old-gone", "older-gone"] {
            let sp = SyncPath::new(p).unwrap();
            assert_eq!(
                folders.history("f", &sp, 10).unwrap(),
                (vec![], false),
                "{p}"
            );
        }
        let t = folders.trees("f").unwrap();
        assert_eq!(t.journal.len(), 2, "the expired paths' records went");
        let (all, h) = folders.changes_since("f", 0).unwrap();
        assert_eq!(h, head, "the head stays");
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|e| e.path.as_str() != "old-gone"));

        // Nothing more to expire: the horizon stays where it was.
        assert_eq!(
            folders.expire_tombstones("f", now_ns(), false).unwrap().0,
            1
        );
        assert_eq!(folders.expired_seq("f").unwrap(), new.seq);
        assert_eq!(
            folders.expire_tombstones("f", now_ns(), false).unwrap(),
            (0, new.seq)
        );
        // A forgotten path is new again.
        let again = c(folders.commit("f", d("old-gone"), 0).unwrap());
        assert_eq!(again.version, 1);
        assert_eq!(folders.expired_seq("f").unwrap(), new.seq);
    }
}
