//! One two-way reconciliation of a directory with a server folder.
//!
//! For every path, three views: the local file (scanned), what was last synced (the state), and the
//! server's newer entry if any (the Changes replay after the state's cursor). The path changed
//! locally if its fingerprint differs from the synced one, and remotely if the server has a newer
//! version. Only-local changes are uploaded, only-remote ones applied; when both changed, equal
//! contents are adopted silently, a modification beats a deletion on either side, and otherwise the
//! server's version takes the path and the local one is kept beside it as a conflicted copy, which
//! is uploaded too. Nothing a person wrote is lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use lbsync_chunkstore::Manifest;
use lbsync_cli::units::count;
use lbsync_proto::{BatchOutcome, CommitOutcome, CommitRequest, Entry, EntryKind, SyncPath};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::cache::ChunkCache;
use crate::codec::FolderCodec;
use crate::confine;
use crate::conflict::conflicted_copy_avoiding;
use crate::error::{Error, Result};
use crate::local::{
    ChunkIndex, IgnoreRules, LocalTree, fingerprint, manifest_of, same_file, scan, unchanged,
};
use crate::place;
use crate::plan::{Action, DeleteGuard, Hashed, Held, View, entry_kind, plan};
use crate::remote::{Committed, Remote};
use crate::state::{Fingerprint, FolderLock, Kind, Problem, StateStore, Synced, marker_problem};
use crate::transfer::{SMALL_FILE, Uploaded, display_device, human, kind_word};

/// The default server when neither `--server`, `LBSYNC_SERVER` nor the state names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7700";

/// How to reach the server and who we are.
#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    /// The server URL (else the state's, else [`DEFAULT_SERVER`]).
    pub server: Option<String>,
    /// The bearer token (else read from `token_file`, else from the file the state names).
    pub token: Option<String>,
    /// The file the token is read from, remembered for later syncs.
    pub token_file: Option<std::path::PathBuf>,
    /// Which server certificates to trust (else what the state remembers).
    pub trust: crate::tls::Trust,
    /// The server folder (else the state's, else `default`).
    pub folder: Option<String>,
    /// The device name (else the state's, else the host name).
    pub device: Option<String>,
    /// Carry out deletions even when they are more than the guard lets through.
    pub allow_mass_delete: bool,
    /// The guard's limits (see [`DeleteGuard`]).
    pub delete_guard: DeleteGuard,
}

/// What a sync did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Files and entries sent.
    pub uploaded: u64,
    /// Files and entries received.
    pub downloaded: u64,
    /// Of those, files whose content was already here: their new mode and mtime were set in
    /// place, the bytes not rewritten.
    pub in_place: u64,
    /// Local paths deleted because the server's were.
    pub deleted_here: u64,
    /// Server paths deleted because local ones were.
    pub deleted_there: u64,
    /// Conflicted copies made.
    pub conflicts: u64,
    /// Chunks sent.
    pub chunks_sent: u64,
    /// Chunks received.
    pub chunks_received: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Paths left for the next sync (still being written, or failed), with the reason.
    pub pending: Vec<String>,
    /// What waits for a person: unreadable subtrees, held deletions, paths that cannot be
    /// applied here. Retried, but not soon.
    pub waiting: Vec<String>,
    /// Deletions held back by the guard.
    pub held: Held,
    /// Local changes kept on this device only, the folder being read-only for it.
    pub local_only: u64,
    /// Seconds taken.
    pub seconds: f64,
}

impl Report {
    /// True when the directory and the server agree.
    pub fn in_sync(&self) -> bool {
        self.pending.is_empty() && self.waiting.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} up, {} down, {} deleted, {}; sent {}, received {} in {:.1}s",
            self.uploaded,
            self.downloaded,
            self.deleted_here + self.deleted_there,
            count(self.conflicts, "conflict"),
            human(self.bytes_sent),
            human(self.bytes_received),
            self.seconds
        )?;
        if !self.pending.is_empty() {
            write!(f, "; {} left for the next sync", self.pending.len())?;
        }
        if !self.waiting.is_empty() {
            write!(f, "; {} need attention", self.waiting.len())?;
        }
        if self.local_only > 0 {
            write!(
                f,
                "; {} kept on this device only (the folder is read-only here)",
                self.local_only
            )?;
        }
        Ok(())
    }
}

/// How a path that changed on both sides was resolved.
enum Resolved {
    /// Nothing more to do (equal contents adopted, or the server's version put in place).
    Done,
    /// Equal contents adopted, but the local metadata differs: upload it on the server's version.
    SendHere,
    /// The local version was moved to this conflicted copy (to upload); the server's goes in
    /// its place.
    KeptCopy(SyncPath),
    /// A local directory stays, the server's file or link was fetched beside it as a conflicted
    /// copy and sent (before the directory, so that a device that had the file never sees the
    /// directory take its place without the copy): the directory is uploaded on top of the
    /// server's version.
    KeptDir,
}

/// A sync in progress: the directory, its state, the server.
pub struct Syncer {
    /// The synced directory.
    pub root: PathBuf,
    /// Its state.
    pub state: StateStore,
    /// The server folder.
    pub remote: Remote,
    /// Chunks local synced files hold.
    pub index: ChunkIndex,
    /// Copies of small synced files' chunks, for deltas.
    pub cache: ChunkCache,
    /// `name#id`, as committed.
    pub device: String,
    /// What happened so far.
    pub report: Report,
    /// The journal seq up to which this sync has seen everything (its own commits included).
    pub(crate) cursor: u64,
    /// The entry at `cursor`, if known (see `State::at_cursor`).
    at_cursor: Option<(String, u64, i64)>,
    /// How this sync was asked to behave.
    opts: SyncOptions,
    /// The root's device and inode when opened: a folder put in its place is another folder.
    root_id: (u64, u64),
    /// Directories that received files this sync: synced before the state that records them.
    pub(crate) placed_dirs: BTreeSet<PathBuf>,
    /// The paths the server showed this sync: names a conflicted copy must not take.
    remote_paths: std::collections::HashSet<SyncPath>,
    /// Problems found this sync (see `State::problems`).
    problems: BTreeMap<String, Problem>,
    /// Chunks fetched ahead for the downloads of the group being applied.
    pub(crate) prefetched: crate::prefetch::Prefetched,
    /// The folder lock, held while this syncer lives.
    _lock: Arc<FolderLock>,
}

/// The token and trust settings for a sync: the options' where given (and then remembered in
/// the state), else what the state remembers.
pub fn access(opts: &SyncOptions, s: &mut crate::state::State) -> Result<crate::remote::Access> {
    if opts.trust.ca_file.is_some() || opts.trust.pin.is_some() {
        s.ca_file = opts.trust.ca_file.clone();
        s.pin = opts.trust.pin.clone();
    }
    if let Some(f) = &opts.token_file {
        s.token_file = Some(f.clone());
    }
    let token = match (&opts.token, &s.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(read_token_file(f)?),
        (None, None) => None,
    };
    Ok(crate::remote::Access {
        token,
        trust: crate::tls::Trust {
            ca_file: s.ca_file.clone(),
            pin: s.pin.clone(),
        },
    })
}

/// The token in a token file: its first line that is not blank or a `#` comment.
pub fn read_token_file(f: &std::path::Path) -> Result<String> {
    let text = fs::read_to_string(f).map_err(|e| {
        Error::Usage(format!(
            "cannot read the token file {}: {e}; pass --token-file with the file that holds \
             your token",
            f.display()
        ))
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::Usage(format!(
                "the token file {} holds no token: put the token on its first line",
                f.display()
            ))
        })
}

pub(crate) fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "device".into())
}

impl Syncer {
    /// Loads the state of `root` and connects to its server folder. Takes the folder's lock
    /// (waiting a few seconds for another client to let go of it).
    pub async fn open(root: &std::path::Path, opts: &SyncOptions) -> Result<Self> {
        let lock = Arc::new(FolderLock::acquire(
            root,
            std::time::Duration::from_secs(3),
        )?);
        Self::open_locked(root, opts, lock).await
    }

    /// [`Syncer::open`] with the folder's lock already held (`watch` keeps it across reconnects).
    pub async fn open_locked(
        root: &std::path::Path,
        opts: &SyncOptions,
        lock: Arc<FolderLock>,
    ) -> Result<Self> {
        let md = fs::metadata(root).map_err(|e| Error::FolderStopped {
            root: root.to_path_buf(),
            reason: format!("it cannot be opened ({e})"),
        })?;
        if !md.is_dir() {
            return Err(Error::Usage(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let root = root
            .canonicalize()
            .map_err(Error::io(format!("resolving {}", root.display())))?;
        let mut state = StateStore::load(&root)?;
        let s = &mut state.state;
        let folder = opts.folder.clone().unwrap_or_else(|| {
            if s.folder.is_empty() {
                "default".into()
            } else {
                s.folder.clone()
            }
        });
        if !s.folder.is_empty() && s.folder != folder {
            return Err(Error::Usage(format!(
                "{} is synced with folder {:?}, not {folder:?}: sync another directory with that folder",
                root.display(),
                s.folder
            )));
        }
        let server = opts
            .server
            .clone()
            .or_else(|| std::env::var("LBSYNC_SERVER").ok())
            .or_else(|| Some(s.server.clone()).filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_SERVER.into());
        let name = opts.device.clone().unwrap_or_else(|| {
            if s.device_name.is_empty() {
                host_name()
            } else {
                s.device_name.clone()
            }
        });
        let device = format!("{name}#{}", s.device_id);
        let access = access(opts, s)?;
        let codec = FolderCodec::of_folder(&state)?;
        let mut remote = Remote::connect_with(&server, &access, &folder, &device).await?;
        crate::codec::check_handshake(&root, &folder, &codec, remote.encrypted)?;
        remote.set_codec(codec.clone());
        state.codec = codec;
        let s = &mut state.state;
        if !s.store_id.is_empty() && s.store_id != remote.store_id {
            warn!(
                "the server's store is not the one {} was synced with (its id is {}, it was {}): \
                 it was replaced or wiped. Nothing will be deleted or replaced for it; every file \
                 here is offered to it again",
                root.display(),
                remote.store_id,
                s.store_id
            );
            s.forgotten = true;
            s.cursor = 0;
        } else if s.cursor > remote.head {
            warn!(
                "the server's journal is behind this directory's ({} < {}): its store was \
                 restored from an older copy. Nothing it holds is taken as newer than what was \
                 synced here; every file here is offered to it again",
                remote.head, s.cursor
            );
            s.forgotten = true;
            s.cursor = 0;
        }
        s.store_id = remote.store_id.clone();
        s.server = server;
        s.folder = folder;
        s.device_name = name;
        if state.state.forgotten {
            // Before anything is applied: a crash must not forget that the server forgot.
            state.save()?;
        }
        let index = ChunkIndex::build(&state);
        let cache = ChunkCache::open(state.dir());
        let root_id = (md.dev(), md.ino());
        let mut syncer = Self {
            root,
            state,
            remote,
            index,
            cache,
            device,
            report: Report::default(),
            cursor: 0,
            at_cursor: None,
            opts: opts.clone(),
            root_id,
            placed_dirs: BTreeSet::new(),
            problems: BTreeMap::new(),
            remote_paths: Default::default(),
            prefetched: Default::default(),
            _lock: lock,
        };
        syncer.recover_tmp();
        syncer.state.clear_stale_tmp();
        Ok(syncer)
    }

    /// Whether the folder is still the one the state was loaded from: the root is there, is the
    /// same directory, and holds the same marker. A folder moved away, unplugged or replaced is
    /// stopped, so that it is never read as every file deleted.
    pub fn check_folder(&self) -> Result<()> {
        let stopped = |reason: String| Error::FolderStopped {
            root: self.root.clone(),
            reason,
        };
        if let Some(why) = marker_problem(&self.root, &self.state.state.marker) {
            return Err(stopped(why));
        }
        match fs::symlink_metadata(&self.root) {
            Ok(md) if (md.dev(), md.ino()) == self.root_id => Ok(()),
            Ok(_) => Err(stopped(
                "another directory took its place (restart lbsync-client if it is the same \
                 folder, restored)"
                    .into(),
            )),
            Err(e) => Err(stopped(format!("it cannot be read ({e})"))),
        }
    }

    /// Puts back what a crash left in `.lbsync/tmp`: a file moved aside for a deletion, or
    /// displaced by a download, whose origin is recorded (see [`place::note_origin`]). It is
    /// deleted only if it is what was synced; otherwise it goes back to its path, or beside it
    /// as a conflicted copy if that is taken.
    fn recover_tmp(&mut self) {
        let Ok(entries) = fs::read_dir(self.state.tmp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let file = e.path();
            if file.extension().is_some_and(|x| x == "origin") {
                if fs::symlink_metadata(file.with_extension("")).is_err() {
                    let _ = fs::remove_file(&file);
                }
                continue;
            }
            let Some((inode_before, path)) = place::origin_of(&file) else {
                continue;
            };
            let Some(now) = fingerprint(&file) else {
                place::clear_origin(&file);
                continue;
            };
            if inode_before != 0 && now.inode == inode_before {
                // A download that was never swapped in: the server still has it.
                let _ = fs::remove_file(&file);
                place::clear_origin(&file);
                continue;
            }
            let synced = self.state.state.files.get(path.as_str()).map(|s| &s.local);
            let res = if now.kind != Kind::Dir && synced.is_some_and(|s| same_file(&now, s)) {
                fs::remove_file(&file).map_err(Error::io(format!("removing {}", file.display())))
            } else {
                match confine::make_parents(&self.root, &path) {
                    Ok(dest) => match place::rename_noreplace(&file, &dest) {
                        Ok(()) => {
                            info!("{path}: put back what an interrupted sync had moved aside");
                            Ok(())
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            self.keep_as_conflicted_copy(&path, &file).map(|copy| {
                                info!(
                                    "{path}: an interrupted sync had moved an edit of it aside; \
                                     kept it as {copy}"
                                );
                            })
                        }
                        Err(e) => Err(Error::io(format!("putting back {path}"))(e)),
                    },
                    Err(e) => Err(e),
                }
            };
            match res {
                Ok(()) => place::clear_origin(&file),
                Err(e) => warn!("{e}; it stays in {}", file.display()),
            }
        }
    }

    /// One two-way reconciliation. Returns what was done; `pending` lists what is left.
    pub async fn sync(&mut self) -> Result<Report> {
        let start = Instant::now();
        let (sent0, received0) = (self.remote.sent, self.remote.received);
        self.report = Report::default();
        self.problems.clear();
        self.check_folder()?;
        // From one before the cursor: the entry at the cursor is read again, and must still be
        // what was synced (see `plan`: a restored store may have numbered another commit so).
        // A server that forgot is read whole until a sync completes: the planner takes what
        // it does not show as what it does not have. A re-scan reads the whole folder too (see
        // `State::rescan`).
        let st = &self.state.state;
        let from = if st.replay || st.forgotten || st.rescan {
            0
        } else {
            st.cursor.saturating_sub(1)
        };
        let unchanged = self.journal_unchanged();
        let (mut remote, mut cursor) = if unchanged {
            debug!(
                "nothing committed since the last sync (the journal head is seq {}, committed \
                 as recorded): no Changes call",
                self.state.state.cursor
            );
            (HashMap::new(), self.state.state.cursor)
        } else {
            self.remote.changes_until_caught_up(from).await?
        };
        let st = &mut self.state.state;
        // A state with nothing synced has nothing a forgotten deletion could leave behind.
        let behind = st.cursor < self.remote.expired_seq && !st.files.is_empty();
        if behind && !st.rescan && !st.forgotten {
            warn!(
                "the server forgot deletions older than its retention, up to seq {}, and {} was \
                 last synced at seq {}: it may have missed one. Re-scanning: a file here the \
                 server no longer lists is offered to it again, nothing is deleted for it",
                self.remote.expired_seq,
                self.root.display(),
                st.cursor
            );
            st.rescan = true;
            // Before anything is applied: a crash must not end the re-scan.
            self.state.save()?;
            if from > 0 {
                let (all, head) = self.remote.changes_until_caught_up(0).await?;
                remote = all;
                cursor = head;
            }
        }
        self.resolve_same_content(&mut remote).await?;
        self.cursor = cursor;
        self.at_cursor = if unchanged {
            self.state.state.at_cursor.clone()
        } else {
            remote
                .values()
                .find(|e| e.seq == cursor)
                .map(|e| (e.path.as_str().to_owned(), e.version, e.committed_ns))
        };
        if !unchanged && !self.state.state.forgotten && self.journal_rewritten(&remote).await? {
            warn!(
                "the server's journal no longer holds what {} last synced: its store was \
                 restored from an older copy. Nothing it holds is taken as newer than what was \
                 synced here; every file here is offered to it again",
                self.root.display()
            );
            self.state.state.forgotten = true;
            self.state.state.cursor = 0;
            self.state.save()?;
            let (mut all, cursor) = self.remote.changes_until_caught_up(0).await?;
            self.resolve_same_content(&mut all).await?;
            remote = all;
            self.cursor = cursor;
            self.at_cursor = remote
                .values()
                .find(|e| e.seq == cursor)
                .map(|e| (e.path.as_str().to_owned(), e.version, e.committed_ns));
        }
        if self.remote.codec().is_sealed() {
            self.report_rollbacks(&remote);
        }
        // A commit in doubt that the server does not show did not happen.
        let files = &self.state.state.files;
        self.state.state.in_doubt.retain(|p| {
            SyncPath::new(p.clone())
                .ok()
                .and_then(|p| remote.get(&p))
                .is_some_and(|r| {
                    r.device == self.device && files.get(p).is_none_or(|s| s.version != r.version)
                })
        });
        let local = scan(&self.root)?;
        // The folder may have gone while it was scanned: then the scan saw nothing of it.
        self.check_folder()?;
        self.retry_problems(&mut remote).await?;
        self.remote_paths = remote.keys().cloned().collect();
        let hashed = self.hash_changed(&local);
        let rules = IgnoreRules::default();
        let root = self.root.clone();
        let ignored = |p: &SyncPath, dir: bool| rules.ignored(&root, p, dir);
        let st = &self.state.state;
        let files = st
            .files
            .values()
            .filter(|s| s.local.kind != Kind::Dir)
            .count() as u64;
        let view = View {
            local: &local,
            synced: &st.files,
            in_doubt: &st.in_doubt,
            forgotten: st.forgotten,
            rescan: st.rescan,
            hashed: &hashed,
            seeding: st.seeding,
            sealed_versions: self.remote.codec().is_sealed(),
        };
        let mut plan = plan(&view, remote, &ignored);
        // Where only the fingerprint moved (the bytes hash as synced), the new one is the
        // evidence the executor checks before it replaces or deletes the file.
        for (path, h) in &hashed {
            let upload = matches!(plan.get(path), Some(Action::Upload { .. }));
            let evidence = *h == Hashed::Same || (*h == Hashed::Metadata && !upload);
            if let (true, Some(s), Some(l)) = (
                evidence,
                self.state.state.files.get_mut(path.as_str()),
                local.files.get(path),
            ) {
                s.local = l.clone();
                s.seen_ns = crate::state::now_ns();
            }
        }
        // Read-only: deletions made here are put back, never sent (see `readonly`).
        let held = if self.opts.allow_mass_delete || self.remote.read_only {
            Held::default()
        } else {
            self.opts.delete_guard.hold(&mut plan, files)
        };
        self.report_held(held);
        for (path, why) in &local.unknown {
            self.report.waiting.push(format!(
                "{path}: cannot be read ({why}); nothing under it is synced"
            ));
        }
        // Rules that change make paths sync or stop syncing: what the server sent for paths
        // ignored until now is read again by the next sync, from the start of the journal.
        let rules_changed = plan.iter().any(|(p, a)| {
            p.file_name() == crate::local::IGNORE_FILE
                && !matches!(
                    a,
                    Action::Refresh | Action::Forget | Action::Drop | Action::Defer { .. }
                )
        });
        let ok = self.execute(plan, &local).await;
        for why in self.remote.take_refused() {
            self.report.waiting.push(why);
        }
        self.report.bytes_sent = self.remote.sent - sent0;
        self.report.bytes_received = self.remote.received - received0;
        let problems = std::mem::take(&mut self.problems);
        let st = &mut self.state.state;
        st.problems = problems;
        for (path, p) in &st.problems {
            self.report.waiting.push(format!("{path}: {}", p.reason));
        }
        st.bytes_sent += self.report.bytes_sent;
        st.bytes_received += self.report.bytes_received;
        // The cursor never passes a commit of ours still in doubt: the next sync must see it
        // again, or it would take our own version for someone else's and make a conflict of it.
        if ok && st.in_doubt.is_empty() {
            st.cursor = self.cursor;
            st.at_cursor = self.at_cursor.clone();
            st.replay = rules_changed;
        }
        let complete = ok && self.report.pending.is_empty() && local.unknown.is_empty();
        if complete && st.forgotten {
            info!("the server has everything this folder holds again");
            st.forgotten = false;
        }
        if complete && st.rescan && st.cursor >= self.remote.expired_seq {
            info!(
                "re-scan done: the server holds again every file here it had forgotten, and \
                 this folder is past its expiry horizon"
            );
            st.rescan = false;
        }
        if complete {
            st.seeding = false;
        }
        st.last_sync_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        self.sync_placed_dirs();
        self.state.save()?;
        self.state.prune_manifests();
        self.report.seconds = start.elapsed().as_secs_f64();
        Ok(self.report.clone())
    }

    /// Fills in the manifest of the files the server sent as the same content as their previous
    /// version (`same_content_base_ns`; the manifest id was left out): the synced one when this
    /// folder holds that previous version with the commit time the server names (or that
    /// version itself, with its own), else the path's history says. The commit time tells the
    /// version this folder synced from another that a store restored from a backup numbered the
    /// same. One whose history cannot be read stays without a manifest: its download then fails
    /// as a problem of the path, which is retried from the history.
    async fn resolve_same_content(&mut self, remote: &mut HashMap<SyncPath, Entry>) -> Result<()> {
        let same_as = self.remote.take_same_as();
        for e in remote.values_mut() {
            if e.kind != EntryKind::File || e.deleted || e.manifest.is_some() {
                continue;
            }
            let base_ns = same_as.get(&e.path).copied().unwrap_or(0);
            let synced = self.state.state.files.get(e.path.as_str());
            if let Some(id) = synced
                .filter(|s| {
                    s.committed_ns != 0
                        && ((s.version + 1 == e.version && s.committed_ns == base_ns)
                            || (s.version == e.version && s.committed_ns == e.committed_ns))
                })
                .and_then(Synced::manifest_id)
            {
                e.manifest = Some(id);
                continue;
            }
            match self.remote.history(&e.path).await {
                Ok(versions) => {
                    e.manifest = versions
                        .into_iter()
                        .find(|v| v.version == e.version)
                        .and_then(|v| v.manifest);
                }
                Err(err) if err.is_offline() => return Err(err),
                Err(err) => warn!("{}: cannot read its history: {err}", e.path),
            }
        }
        Ok(())
    }

    /// Whether a name is in use, here or on the server as far as this sync has seen.
    fn name_taken(&self, p: &SyncPath) -> bool {
        self.state.state.files.contains_key(p.as_str()) || self.remote_paths.contains(p)
    }

    /// Whether this sync may skip its Changes call: the handshake it is the first sync after
    /// shows the journal head at our cursor, committed at the time recorded for the entry there
    /// (so the same commit, not another a restored store numbered so), and nothing of ours is in
    /// doubt or past the cursor. A re-read of the journal (replay, forgotten, re-scan) never
    /// skips. The handshake's head is taken once: a later sync on this connection asks.
    fn journal_unchanged(&mut self) -> bool {
        let head = self.remote.take_head();
        let st = &self.state.state;
        let Some((_, _, at_ns)) = st.at_cursor.as_ref() else {
            return false;
        };
        head.is_some_and(|(seq, ns)| seq == st.cursor && seq > 0 && ns != 0 && ns == *at_ns)
            && !(st.replay || st.forgotten || st.rescan)
            && st.in_doubt.is_empty()
            && !st.files.values().any(|s| s.seq > st.cursor)
    }

    /// Whether the journal entry at the cursor (read again: the replay starts one before it) is
    /// not the one this folder recorded there: another commit took its number, so the server's
    /// journal was replaced since (a store restored from a backup, then written to).
    async fn journal_rewritten(&mut self, remote: &HashMap<SyncPath, Entry>) -> Result<bool> {
        let st = &self.state.state;
        // Past the cursor, the server forgot old deletions: a path it no longer shows at all may
        // be one of them (deleted since, then forgotten), which says nothing of a restore. The
        // re-scan offers such a path again (see `State::rescan`).
        let expired = st.cursor < self.remote.expired_seq;
        // Our own commits past the cursor (a sync that was stopped before it moved the cursor
        // on) are in what was just read, or a later version of their path is: a journal without
        // them was restored from before them.
        let lost = st.files.iter().find(|(p, s)| {
            s.seq > st.cursor
                && match SyncPath::new((*p).clone())
                    .ok()
                    .and_then(|p| remote.get(&p))
                {
                    Some(r) => r.version < s.version,
                    None => !expired,
                }
        });
        if let Some((p, s)) = lost {
            debug!(
                "{p}: synced as v{} at journal seq {}, which the server's journal no longer shows",
                s.version, s.seq
            );
            return Ok(true);
        }
        let Some((path, version, at_ns)) = st.at_cursor.clone().filter(|_| st.cursor > 0) else {
            return Ok(false);
        };
        let recorded = st
            .files
            .get(&path)
            .filter(|s| s.version == version)
            .cloned();
        // That commit: this path at this version, committed at that time, with the content
        // recorded for it.
        let same = |e: &Entry| {
            e.path.as_str() == path
                && e.version == version
                && (at_ns == 0 || e.committed_ns == 0 || e.committed_ns == at_ns)
                && recorded
                    .as_ref()
                    .is_none_or(|s| !e.deleted && crate::plan::holds(e, s))
        };
        if let Some(e) = remote.values().find(|e| e.seq == st.cursor) {
            return Ok(!same(e));
        }
        // The replay shows a path's latest entry only: ask for that version itself.
        let Ok(sp) = SyncPath::new(path.clone()) else {
            return Ok(false);
        };
        match self.remote.history_version(&sp, version).await? {
            Some(e) => Ok(!same(&e)),
            // The path is gone with all its versions: forgotten, not rewritten.
            None if expired && self.remote.history(&sp).await?.is_empty() => Ok(false),
            None => Ok(true),
        }
    }

    /// In an encrypted folder, says where the server shows an older version of a path than the
    /// one synced here as its newest: every version is sealed with its number, so this is an
    /// old entry replayed (a server restored from a backup, or a hostile one). The planner does
    /// not apply it (see `plan`: an older version is never taken as newer).
    fn report_rollbacks(&mut self, remote: &HashMap<SyncPath, Entry>) {
        for (path, e) in remote {
            let Some(s) = self.state.state.files.get(path.as_str()) else {
                continue;
            };
            if e.version < s.version {
                let msg = format!(
                    "the server shows v{} of {path} as its newest version, but v{} was synced \
                     here: an older version replayed (a server restored from a backup, or one \
                     that tampers); it is not applied",
                    e.version, s.version
                );
                warn!("{msg}");
                self.report.waiting.push(msg);
            }
        }
    }

    /// Says what the guard held back, and how to let it through.
    fn report_held(&mut self, held: Held) {
        self.report.held = held;
        let confirm = format!(
            "lbsync-client sync {} --allow-mass-delete",
            self.root.display()
        );
        if held.there > 0 {
            let msg = format!(
                "held back {} made here: that is more than this folder's guard lets \
                 through at once, so nothing was deleted on the server. If you meant it, run \
                 `{confirm}`; if not, put the files back (they are still on the server: \
                 `lbsync-client sync` in an empty directory fetches them)",
                count(held.there, "deletion")
            );
            warn!("{msg}");
            self.report.waiting.push(msg);
        }
    }

    /// Hashes the files whose fingerprint moved, or was taken too close to their last change to
    /// be trusted: a file whose bytes and mode are as synced is not a change.
    fn hash_changed(&self, local: &LocalTree) -> HashMap<SyncPath, Hashed> {
        let mut out = HashMap::new();
        for (path, fp) in &local.files {
            let Some(s) = self.state.state.files.get(path.as_str()) else {
                continue;
            };
            if fp.kind != Kind::File || s.local.kind != Kind::File {
                continue;
            }
            if unchanged(fp, &s.local) && !s.racy() {
                continue;
            }
            let same = s.manifest_id().is_some_and(|id| {
                manifest_of(
                    &path.to_local(&self.root),
                    self.remote.params,
                    self.remote.codec(),
                )
                .is_ok_and(|m| m.id() == id)
            });
            // A new mtime on the same bytes is sent too (as a metadata-only commit).
            let meta_same = fp.mode == s.local.mode && fp.mtime_ns == s.local.mtime_ns;
            let h = match (same, meta_same) {
                (true, true) => Hashed::Same,
                (true, false) => Hashed::Metadata,
                (false, _) => Hashed::Changed,
            };
            out.insert(path.clone(), h);
        }
        out
    }

    /// Puts the paths whose problems are due for a retry back in the plan, with their newest
    /// server entry. The others keep their problem as it was.
    async fn retry_problems(&mut self, remote: &mut HashMap<SyncPath, Entry>) -> Result<()> {
        let problems = self.state.state.problems.clone();
        for (path, p) in problems {
            let Ok(sp) = SyncPath::new(path.clone()) else {
                continue;
            };
            if !p.due() || remote.contains_key(&sp) {
                if !p.due() {
                    self.problems.insert(path, p);
                }
                continue;
            }
            match self.remote.history(&sp).await {
                Ok(versions) => {
                    if let Some(newest) = versions.into_iter().max_by_key(|e| e.version) {
                        remote.insert(sp, newest);
                    }
                }
                Err(e) if e.is_offline() => return Err(e),
                Err(e) => {
                    self.problems.insert(path, p);
                    warn!("{sp}: cannot ask the server for it again: {e}");
                }
            }
        }
        // Seen again this sync: the old problem is passed on in case it fails again.
        Ok(())
    }

    /// When the earliest problem that waits for its backoff is due, if any.
    pub fn next_retry(&self) -> Option<tokio::time::Instant> {
        let ns = self
            .state
            .state
            .problems
            .values()
            .filter(|p| p.attempts > 0)
            .map(|p| p.retry_ns)
            .min()?;
        let wait = (ns - crate::state::now_ns()).max(0) as u64;
        Some(tokio::time::Instant::now() + std::time::Duration::from_nanos(wait))
    }

    /// Records that the server's version `version` of `path` could not be applied here.
    pub(crate) fn problem(&mut self, path: &SyncPath, e: &Error, version: u64) {
        let prev = self.state.state.problems.get(path.as_str());
        let p = Problem::next(prev, e.to_string(), version);
        warn!(
            "{path}: {e}; other paths go on, and it is tried again{}",
            if p.attempts > 3 {
                " later"
            } else {
                " at the next sync"
            }
        );
        self.problems.insert(path.as_str().to_owned(), p);
    }

    /// A path changed here: what waits under it for its backoff (its parent was a link, a file)
    /// may fit now, and is tried at the next sync.
    fn unblock_under(&mut self, path: &SyncPath) {
        let under = format!("{path}/");
        for (_, p) in self
            .problems
            .range_mut(under.clone()..)
            .take_while(|(k, _)| k.starts_with(&under))
        {
            p.retry_ns = 0;
        }
    }

    /// fsyncs the directories that received files, so that what the state records is on disk.
    fn sync_placed_dirs(&mut self) {
        for dir in std::mem::take(&mut self.placed_dirs) {
            if let Err(e) = fs::File::open(&dir).and_then(|d| d.sync_all()) {
                warn!("syncing directory {}: {e}", dir.display());
            }
        }
    }

    /// Runs the plan: conflicts, then what comes from the server (parents first), local deletions
    /// (children first), uploads (parents first), server deletions (children first). Returns
    /// false if a server change could not be applied for a reason that goes away by itself (the
    /// server went away): the cursor then stays where it was. A change that cannot be applied
    /// here for a local reason becomes a problem of its path, and the others go on.
    async fn execute(&mut self, plan: BTreeMap<SyncPath, Action>, local: &LocalTree) -> bool {
        let local = &local.files;
        let mut uploads: Vec<(SyncPath, u64)> = Vec::new();
        let mut deletes_there: Vec<(SyncPath, u64, EntryKind)> = Vec::new();
        let mut deletes_here: Vec<Entry> = Vec::new();
        let mut applies: Vec<Entry> = Vec::new();
        let mut remote_ok = true;
        for (path, action) in plan {
            match action {
                Action::Upload { base } => uploads.push((path, base)),
                Action::DeleteThere { base, kind } => deletes_there.push((path, base, kind)),
                Action::Apply(r) => applies.push(r),
                Action::DeleteHere(r) => deletes_here.push(r),
                Action::Adopt(r) => self.adopt(&r, local.get(&path)),
                // Done before the plan ran (see `sync`).
                Action::Refresh => {}
                Action::Drop => {
                    self.state.state.files.remove(path.as_str());
                    self.state.state.in_doubt.remove(path.as_str());
                }
                Action::Forget => {
                    self.state.state.files.remove(path.as_str());
                    self.state.state.in_doubt.remove(path.as_str());
                    info!(
                        "{path} is ignored now: it stays as it is, here and on other devices, \
                         but no longer syncs"
                    );
                }
                Action::Defer { entry, reason } => {
                    // Tried again at every sync: it waits for the subtree to become readable,
                    // which is no failure to back off from.
                    let reason = format!(
                        "the {} from {} waits: {reason}",
                        kind_word(entry.kind),
                        display_device(&entry.device)
                    );
                    info!("{path}: {reason}");
                    let p = Problem::waiting(reason, entry.version);
                    self.problems.insert(path.as_str().to_owned(), p);
                }
                Action::Returning(r) => match self.returning(&r).await {
                    Ok(true) => {}
                    Ok(false) => uploads.push((path, r.version)),
                    Err(e) => self.pending(&path, &e),
                },
                Action::BothChanged(r) => match self.both_changed(&r, local.get(&path)).await {
                    Ok(Resolved::KeptCopy(copy)) => {
                        uploads.push((copy, 0));
                        applies.push(r);
                    }
                    Ok(Resolved::KeptDir | Resolved::SendHere) => uploads.push((path, r.version)),
                    Ok(Resolved::Done) => {}
                    Err(e) if e.is_offline() => {
                        remote_ok = false;
                        self.pending(&path, &e);
                    }
                    Err(e) => self.problem(&path, &e, r.version),
                },
            }
        }
        // A file or link that takes a directory's place waits for the deletions here, which may
        // empty that directory.
        let (over_dirs, applies): (Vec<_>, Vec<_>) = applies.into_iter().partition(|r| {
            r.kind != EntryKind::Dir && local.get(&r.path).is_some_and(|f| f.kind == Kind::Dir)
        });
        // New paths first, replacements after (each group parents first): a file that gives way
        // to a directory has its conflicted copy placed before, even if the sync stops between.
        let replaced: Vec<&SyncPath> = applies
            .iter()
            .map(|r| &r.path)
            .filter(|p| local.contains_key(*p))
            .collect();
        let after_replaced = |r: &Entry| {
            replaced
                .iter()
                .any(|p| r.path == **p || r.path.as_str().starts_with(&format!("{p}/")))
        };
        let (later, first): (Vec<Entry>, Vec<Entry>) =
            applies.iter().cloned().partition(|r| after_replaced(r));
        let applies: Vec<Entry> = first.into_iter().chain(later).collect();
        for group in crate::prefetch::groups(&applies) {
            self.prefetched =
                crate::prefetch::fetch(&mut self.remote, &self.state, &self.index, group).await;
            remote_ok &= self.apply_group(group, local).await;
        }
        self.prefetched = Default::default();
        deletes_here.sort_by(|a, b| b.path.cmp(&a.path));
        for r in deletes_here {
            if let Some(reupload) = self.delete_here(&r) {
                uploads.push((reupload, r.version));
            }
        }
        for r in over_dirs {
            let dest = r.path.to_local(&self.root);
            // What syncs under it and is still there after the deletions (a directory that holds
            // only ignored files waits instead, as a problem: they are this device's alone).
            let under = format!("{}/", r.path);
            let holds_files = local.keys().any(|p| {
                p.as_str().starts_with(&under) && fingerprint(&p.to_local(&self.root)).is_some()
            });
            match fingerprint(&dest).filter(|f| f.kind == Kind::Dir && holds_files) {
                // Still holding files that sync: the directory stays and the server's file or
                // link is kept beside it, as when both changed.
                Some(here) => match self.both_changed(&r, Some(&here)).await {
                    Ok(Resolved::KeptDir | Resolved::SendHere) => {
                        uploads.push((r.path.clone(), r.version));
                    }
                    Ok(_) => {}
                    Err(e) if e.is_offline() => {
                        remote_ok = false;
                        self.pending(&r.path, &e);
                    }
                    Err(e) => self.problem(&r.path, &e, r.version),
                },
                None => remote_ok &= self.apply(&r).await,
            }
        }
        if self.remote.read_only {
            let paths = uploads
                .into_iter()
                .map(|(p, _)| p)
                .chain(deletes_there.into_iter().map(|(p, ..)| p))
                .collect();
            return self.keep_local(paths).await && remote_ok;
        }
        // Directories first (parents before what they hold), then small files together, then
        // large files, links and what the batch left.
        let kind = |p: &SyncPath| local.get(p).map(|f| (f.kind, f.size));
        let (dirs, uploads): (Vec<_>, Vec<_>) = uploads
            .into_iter()
            .partition(|(p, _)| matches!(kind(p), Some((Kind::Dir, _))));
        let (small, mut uploads): (Vec<_>, Vec<_>) = uploads
            .into_iter()
            .partition(|(p, _)| matches!(kind(p), Some((Kind::File, size)) if size <= SMALL_FILE));
        self.upload_each(dirs).await;
        let left = self.upload_small_files(small).await;
        uploads.extend(left);
        self.upload_each(uploads).await;
        deletes_there.sort_by(|a, b| b.0.cmp(&a.0));
        self.delete_there(deletes_there).await;
        remote_ok
    }

    /// Writes the server's version here. False if that failed for a reason that goes away by
    /// itself (the server went away); another failure becomes a problem of the path.
    pub(crate) async fn apply(&mut self, r: &Entry) -> bool {
        let res = match r.kind {
            EntryKind::File => self.download_file(r).await,
            _ => self.apply_plain(r),
        };
        self.applied(r, res)
    }

    /// Applies a group of the server's entries. New small files (no path here, no record) are
    /// written to temp files first, made durable together by one `syncfs`, then put in place:
    /// one flush for the group instead of an fsync a file. The rest is applied one by one.
    async fn apply_group(
        &mut self,
        group: &[Entry],
        local: &BTreeMap<SyncPath, Fingerprint>,
    ) -> bool {
        let mut remote_ok = true;
        let mut staged = Vec::new();
        for r in group {
            let new_small_file = r.kind == EntryKind::File
                && !r.deleted
                && r.size <= crate::transfer::SMALL_FILE
                && !local.contains_key(&r.path)
                && !self.state.state.files.contains_key(r.path.as_str());
            if !new_small_file {
                remote_ok &= self.apply(r).await;
                continue;
            }
            match self.stage_download(r, false).await {
                Ok(s) => staged.push((r, s)),
                Err(e) => remote_ok &= self.applied(r, Err(e)),
            }
        }
        if staged.is_empty() {
            return remote_ok;
        }
        let tmp_dir = self.state.tmp_dir();
        let durable = fs::File::open(&tmp_dir)
            .and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from))
            .map_err(Error::io(format!(
                "flushing the downloads in {}",
                tmp_dir.display()
            )));
        for (r, s) in staged {
            let res = match &durable {
                Ok(()) => self.place_download(r, s),
                Err(e) => Err(Error::Usage(e.to_string())),
            };
            remote_ok &= self.applied(r, res);
        }
        remote_ok
    }

    /// Counts an applied entry, or makes its failure pending (a reason that goes away by
    /// itself: false) or a problem of the path.
    fn applied(&mut self, r: &Entry, res: Result<()>) -> bool {
        match res {
            Ok(()) => {
                self.report.downloaded += 1;
                self.unblock_under(&r.path);
                true
            }
            Err(e) if e.is_offline() => {
                self.pending(&r.path, &e);
                false
            }
            Err(e) => {
                self.problem(&r.path, &e, r.version);
                true
            }
        }
    }

    /// A local file the state does not know, where the server has a tombstone (a device whose
    /// state was lost, a folder seeded from a backup): if its content is a version the path had
    /// before it was deleted, it is not brought back but moved to `.lbsync/trash/` (true);
    /// otherwise it is new, and is uploaded (false).
    pub(crate) async fn returning(&mut self, r: &Entry) -> Result<bool> {
        let local = confine::check(&self.root, &r.path)?;
        let Some(fp) = fingerprint(&local) else {
            return Ok(true);
        };
        let old = match fp.kind {
            Kind::File => {
                let m = manifest_of(&local, self.remote.params, self.remote.codec())?;
                let versions = self.remote.history(&r.path).await?;
                versions
                    .iter()
                    .any(|v| !v.deleted && v.version < r.version && v.manifest == Some(m.id()))
            }
            // A directory holds what it holds; a link is as cheap to keep as to send.
            _ => false,
        };
        if !old {
            return Ok(false);
        }
        let trash = self.bury(&r.path, &local)?;
        self.adopt(r, None);
        info!(
            "{} was deleted on {}, and this copy is a version it had before: it was not brought \
             back, but moved to {}",
            r.path,
            display_device(&r.device),
            trash.display()
        );
        Ok(true)
    }

    /// Moves `local` (the file at `path`) to `.lbsync/trash/<path>` under a free name.
    fn bury(&mut self, path: &SyncPath, local: &Path) -> Result<PathBuf> {
        let dest = self.state.trash_dir().join(path.as_str());
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(Error::io(format!("creating {}", parent.display())))?;
        }
        for n in 1u32.. {
            let to = if n == 1 {
                dest.clone()
            } else {
                PathBuf::from(format!("{} ({n})", dest.display()))
            };
            match place::rename_noreplace(local, &to) {
                Ok(()) => return Ok(to),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("moving {path} to {}", to.display()))(e)),
            }
        }
        unreachable!("some name is free")
    }

    /// Uploads paths one at a time; a failure leaves that path pending.
    async fn upload_each(&mut self, uploads: Vec<(SyncPath, u64)>) {
        for (path, base) in uploads {
            if let Err(e) = self.upload(&path, base).await {
                if e.is_offline() {
                    self.save_quietly();
                }
                self.pending(&path, &e);
            }
        }
    }

    /// Notes a commit of ours (`version` of `path` at `seq`): when it directly follows what we
    /// have seen, nothing was missed.
    pub(crate) fn saw_commit(&mut self, seq: u64, path: &SyncPath, version: u64, at_ns: i64) {
        if seq == self.cursor + 1 {
            self.cursor = seq;
            self.at_cursor = Some((path.as_str().to_owned(), version, at_ns));
        }
    }

    pub(crate) fn pending(&mut self, path: &SyncPath, e: &Error) {
        warn!("{path}: {e}");
        self.report.pending.push(format!("{path}: {e}"));
    }

    pub(crate) fn save_quietly(&mut self) {
        if let Err(e) = self.state.save() {
            warn!("{e}");
        }
    }

    /// Takes the server's entry as synced without touching the disk (the local side already
    /// matches it).
    fn adopt(&mut self, r: &Entry, here: Option<&Fingerprint>) {
        self.state.state.in_doubt.remove(r.path.as_str());
        match (r.deleted, here) {
            (true, _) | (false, None) => {
                self.state.state.files.remove(r.path.as_str());
            }
            (false, Some(l)) => {
                self.state.state.files.insert(
                    r.path.as_str().to_owned(),
                    Synced {
                        seq: r.seq,
                        committed_ns: r.committed_ns,
                        ..Synced::new(r.version, r.manifest, l.clone())
                    },
                );
                if let Some(m) = r.manifest.and_then(|id| self.state.manifest(&id)) {
                    self.index.add(&r.path, &m);
                }
            }
        }
    }

    /// Both sides changed a path that both still have. Equal contents: adopt. A local file the
    /// state does not know that holds an older server version (a download whose state was never
    /// saved): replace it. Otherwise move the local version to a conflicted copy (returned, to be
    /// uploaded) so the server's can take the path.
    async fn both_changed(&mut self, r: &Entry, here: Option<&Fingerprint>) -> Result<Resolved> {
        let Some(l) = here else {
            return Ok(Resolved::Done);
        };
        let same = match (l.kind, r.kind) {
            (Kind::Dir, EntryKind::Dir) => true,
            (Kind::Symlink, EntryKind::Symlink) => l.target == r.symlink_target,
            (Kind::File, EntryKind::File) => {
                let m = manifest_of(
                    &r.path.to_local(&self.root),
                    self.remote.params,
                    self.remote.codec(),
                )?;
                if Some(m.id()) == r.manifest {
                    self.state.put_manifest(&m)?;
                } else if let Some(old) = self.old_server_version(&r.path, &m, l).await? {
                    info!(
                        "{} here is an older version from the server (v{}: its download was \
                         interrupted before it was recorded): replacing it",
                        r.path, old.version
                    );
                    // Recorded as that version first, so that the download swaps it out as any
                    // synced file: the path always holds one of the two.
                    self.state.put_manifest(&m)?;
                    self.adopt(&old, Some(l));
                    self.download_file(r).await?;
                    self.report.downloaded += 1;
                    return Ok(Resolved::Done);
                }
                Some(m.id()) == r.manifest
            }
            _ => false,
        };
        if same {
            self.adopt(r, Some(l));
            // Same bytes, another mode (chmodded here before the state knew the file): the
            // mode here is sent, as any metadata change.
            let theirs = if r.mode == 0 { 0o644 } else { r.mode & 0o777 };
            if l.kind == Kind::File && l.mode & 0o777 != theirs {
                return Ok(Resolved::SendHere);
            }
            return Ok(Resolved::Done);
        }
        if l.kind == Kind::Dir {
            // A local directory against a server file or link: the directory stays; the server's
            // entry is fetched beside it as a conflicted copy.
            let copy = conflicted_copy_avoiding(
                &self.root,
                &r.path,
                display_device(&r.device),
                chrono::Local::now(),
                &|p| self.name_taken(p),
            );
            let mut renamed = r.clone();
            renamed.path = copy.clone();
            info!(
                "conflict: {} is a directory here and a {} on the server; the server's is kept as {copy}",
                r.path,
                kind_word(r.kind)
            );
            match r.kind {
                EntryKind::File => self.download_file(&renamed).await?,
                _ => self.apply_plain(&renamed)?,
            }
            self.state.state.files.remove(copy.as_str());
            self.report.conflicts += 1;
            Box::pin(self.upload(&copy, 0)).await?;
            return Ok(Resolved::KeptDir);
        }
        let copy = self.conflict_copy_of(&r.path)?;
        info!(
            "conflict: {} changed here and on {}; kept this device's version as {copy}",
            r.path,
            display_device(&r.device)
        );
        Ok(Resolved::KeptCopy(copy))
    }

    /// The version the server has held at `path` that `m`, the content of a local file the state
    /// does not know, is, if any: then nobody edited it here, and the newer one may replace it.
    async fn old_server_version(
        &mut self,
        path: &SyncPath,
        m: &Manifest,
        l: &Fingerprint,
    ) -> Result<Option<Entry>> {
        let files = &self.state.state.files;
        // A file the state knows under another name was moved here by a person (renamed back
        // into place, say): that is an edit, not a download left unrecorded.
        let moved = || {
            files.iter().any(|(p, s)| {
                p != path.as_str() && s.local.dev == l.dev && s.local.inode == l.inode
            })
        };
        if files.contains_key(path.as_str()) || moved() {
            return Ok(None);
        }
        let versions = self.remote.history(path).await?;
        Ok(versions
            .into_iter()
            .find(|v| !v.deleted && v.manifest == Some(m.id())))
    }

    /// Moves a local path aside to a conflicted-copy name (never deleting it) and returns the name.
    pub(crate) fn conflict_copy_of(&mut self, path: &SyncPath) -> Result<SyncPath> {
        let from = path.to_local(&self.root);
        self.keep_as_conflicted_copy(path, &from)
    }

    /// Moves `from`, a version of `path` this device made, to a conflicted-copy name of `path`
    /// (never over anything) and returns the name. `path` is no longer synced until it is again.
    pub(crate) fn keep_as_conflicted_copy(
        &mut self,
        path: &SyncPath,
        from: &Path,
    ) -> Result<SyncPath> {
        let name = self.state.state.device_name.clone();
        loop {
            let copy =
                conflicted_copy_avoiding(&self.root, path, &name, chrono::Local::now(), &|p| {
                    self.name_taken(p)
                });
            let to = copy.to_local(&self.root);
            match place::rename_noreplace(from, &to) {
                Ok(()) => {
                    self.state.state.files.remove(path.as_str());
                    self.report.conflicts += 1;
                    return Ok(copy);
                }
                // The name was taken in the meantime: pick the next one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::io(format!(
                        "keeping {} as {}",
                        from.display(),
                        to.display()
                    ))(e));
                }
            }
        }
    }

    /// Deletes a local path the server deleted, unless it was edited since it was synced (then it
    /// is returned, to be uploaded again: a modification beats a deletion).
    fn delete_here(&mut self, r: &Entry) -> Option<SyncPath> {
        let dest = match confine::check(&self.root, &r.path) {
            Ok(d) => d,
            Err(e) => {
                self.problem(&r.path, &e, r.version);
                return None;
            }
        };
        let synced = self
            .state
            .state
            .files
            .get(r.path.as_str())
            .map(|s| s.local.clone());
        let now = fingerprint(&dest);
        let edited = match (&now, &synced) {
            (Some(n), Some(s)) => !unchanged(n, s),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if edited {
            info!(
                "{} was deleted on {} but edited here: keeping it",
                r.path,
                display_device(&r.device)
            );
            return Some(r.path.clone());
        }
        let res = match now.map(|n| n.kind) {
            Some(Kind::Dir) => fs::remove_dir(&dest).map(|()| true),
            Some(_) => self.remove_unchanged(&r.path, synced.as_ref()),
            None => Ok(true),
        };
        match res {
            Ok(false) => {
                info!(
                    "{} was deleted on {} but edited here at that moment: keeping it",
                    r.path,
                    display_device(&r.device)
                );
                Some(r.path.clone())
            }
            Ok(true) => {
                self.state.state.files.remove(r.path.as_str());
                self.report.deleted_here += 1;
                self.unblock_under(&r.path);
                info!(
                    "deleted {} (deleted on {})",
                    r.path,
                    display_device(&r.device)
                );
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                info!(
                    "{} was deleted on {}, but holds files that do not sync: keeping it",
                    r.path,
                    display_device(&r.device)
                );
                Some(r.path.clone())
            }
            Err(e) => {
                self.problem(
                    &r.path,
                    &Error::io(format!("deleting {}", dest.display()))(e),
                    r.version,
                );
                None
            }
        }
    }

    /// Removes the file or symlink at `path` if it is still what was synced (`synced`): it is
    /// moved aside first and looked at there, so a write that lands meanwhile is not lost. `false`
    /// if it changed: then it is back in its place, or beside it as a conflicted copy if that
    /// place was taken in the meantime.
    pub(crate) fn remove_unchanged(
        &mut self,
        path: &SyncPath,
        synced: Option<&Fingerprint>,
    ) -> std::io::Result<bool> {
        let dest = path.to_local(&self.root);
        let Some(aside) = place::move_aside(&dest, &self.state.tmp_dir(), "deleted", path)? else {
            return Ok(true);
        };
        let old = fingerprint(&aside);
        if old.is_none_or(|o| synced.is_some_and(|s| same_file(&o, s))) {
            fs::remove_file(&aside)?;
            place::clear_origin(&aside);
            return Ok(true);
        }
        let back = place::rename_noreplace(&aside, &dest);
        if back.is_ok() {
            place::clear_origin(&aside);
        }
        match back {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let copy = self
                    .keep_as_conflicted_copy(path, &aside)
                    .map_err(std::io::Error::other)?;
                place::clear_origin(&aside);
                info!(
                    "{path} was replaced here while it was deleted: kept the edited file as {copy}"
                );
                Ok(false)
            }
            res => res.map(|()| false),
        }
    }

    /// Uploads one local path (file, directory or symlink) on `base`.
    async fn upload(&mut self, path: &SyncPath, base: u64) -> Result<()> {
        let local = confine::check(&self.root, path)?;
        let Some(fp) = fingerprint(&local) else {
            return Ok(());
        };
        let outcome = match fp.kind {
            Kind::File => match self.upload_file(path, base).await? {
                Uploaded::Done => {
                    self.report.uploaded += 1;
                    return Ok(());
                }
                Uploaded::NotSettled => {
                    self.report
                        .pending
                        .push(format!("{path}: still being written"));
                    info!("{path} is still being written: it will be sent once it settles");
                    return Ok(());
                }
                Uploaded::Conflict(cur) => CommitOutcome::Conflict(cur),
            },
            Kind::Dir | Kind::Symlink => {
                let entry = Entry {
                    mode: fp.mode,
                    mtime_ns: fp.mtime_ns,
                    symlink_target: fp.target.clone(),
                    ..Entry::new(path.clone(), entry_kind(fp.kind), &self.device)
                };
                self.commit_plain(entry, base).await?
            }
        };
        match outcome {
            CommitOutcome::Committed(e) => {
                self.saw_commit(e.seq, path, e.version, e.committed_ns);
                info!("uploaded {} {path}", kind_word(e.kind));
                self.state.state.files.insert(
                    path.as_str().to_owned(),
                    Synced {
                        seq: e.seq,
                        committed_ns: e.committed_ns,
                        ..Synced::new(e.version, None, fp)
                    },
                );
                self.report.uploaded += 1;
                Ok(())
            }
            CommitOutcome::Conflict(cur) => {
                // Someone committed in between: resolve as if the plan had seen it.
                let here = fingerprint(&local);
                let unknown_here = !self.state.state.files.contains_key(path.as_str());
                let seeding = self.state.state.seeding;
                if cur.deleted && unknown_here && seeding && self.returning(&cur).await? {
                    return Ok(());
                }
                if cur.deleted || cur.version == 0 {
                    // A synced record of the version the server has as this deletion describes
                    // another version (a store restored from a backup numbers versions anew):
                    // forgotten, so that the file goes as content, never again as a
                    // metadata-only commit on content the server does not have there (which
                    // would meet this conflict again, without end).
                    let renumbered = self
                        .state
                        .state
                        .files
                        .get(path.as_str())
                        .is_some_and(|s| cur.version > 0 && s.version == cur.version);
                    if renumbered {
                        self.state.state.files.remove(path.as_str());
                    }
                    return Box::pin(self.upload(path, cur.version)).await;
                }
                // Unchanged here since it was synced, and the server holds a newer version: as
                // the plan would have, take it (no conflicted copy). An unchanged file is
                // uploaded when the server showed an older version than the one synced here:
                // a store restored from a backup, or an old entry replayed.
                let as_synced = self.state.state.files.get(path.as_str()).is_some_and(|s| {
                    cur.version > s.version && here.as_ref().is_some_and(|l| unchanged(l, &s.local))
                });
                // Only its mode or mtime changed here (a metadata-only commit that met an edit):
                // the bytes are as synced, so the newer version takes the path as above, and the
                // new fingerprint is the evidence the download checks.
                let as_synced = as_synced || self.metadata_only_here(path, &cur, here.as_ref());
                if as_synced {
                    match cur.kind {
                        EntryKind::File => self.download_file(&cur).await?,
                        _ => self.apply_plain(&cur)?,
                    }
                    self.report.downloaded += 1;
                    return Ok(());
                }
                match self.both_changed(&cur, here.as_ref()).await? {
                    Resolved::Done => Ok(()),
                    Resolved::KeptDir | Resolved::SendHere => {
                        Box::pin(self.upload(path, cur.version)).await
                    }
                    Resolved::KeptCopy(copy) => {
                        match cur.kind {
                            EntryKind::File => self.download_file(&cur).await?,
                            _ => self.apply_plain(&cur)?,
                        }
                        self.report.downloaded += 1;
                        Box::pin(self.upload(&copy, 0)).await
                    }
                }
            }
        }
    }

    /// Whether the file at `path`, `here`, differs from what was synced only in its metadata
    /// (its bytes hash as synced) while the server holds a newer version `cur`; then its
    /// fingerprint is recorded as the synced one's, as the plan does for such a file.
    fn metadata_only_here(
        &mut self,
        path: &SyncPath,
        cur: &Entry,
        here: Option<&Fingerprint>,
    ) -> bool {
        let Some(l) = here.filter(|l| l.kind == Kind::File) else {
            return false;
        };
        let Some(s) = self.state.state.files.get(path.as_str()) else {
            return false;
        };
        if cur.version <= s.version || s.local.kind != Kind::File {
            return false;
        }
        let Some(id) = s.manifest_id() else {
            return false;
        };
        let same = manifest_of(
            &path.to_local(&self.root),
            self.remote.params,
            self.remote.codec(),
        )
        .is_ok_and(|m| m.id() == id);
        if same && let Some(s) = self.state.state.files.get_mut(path.as_str()) {
            s.local = l.clone();
            s.seen_ns = crate::state::now_ns();
        }
        same
    }

    /// Sends one commit. Its path is in doubt until the answer comes (see `State::in_doubt`).
    pub(crate) async fn commit(&mut self, req: CommitRequest) -> Result<Committed> {
        let path = req.entry.path.as_str().to_owned();
        self.state.state.in_doubt.insert(path.clone());
        // On disk before it is sent: a crash after the server committed must still know.
        self.state.save()?;
        let answer = self.remote.commit(req).await?;
        self.state.state.in_doubt.remove(&path);
        Ok(answer)
    }

    /// Sends commits in one batch, with this device; like [`Syncer::commit`] for doubt.
    pub(crate) async fn commit_batch(
        &mut self,
        reqs: Vec<CommitRequest>,
    ) -> Result<Vec<BatchOutcome>> {
        let paths: Vec<String> = reqs
            .iter()
            .map(|r| r.entry.path.as_str().to_owned())
            .collect();
        self.state.state.in_doubt.extend(paths.iter().cloned());
        self.state.save()?;
        let device = self.device.clone();
        let answers = self.remote.commit_batch(&device, reqs).await?;
        for p in &paths {
            self.state.state.in_doubt.remove(p);
        }
        Ok(answers)
    }

    /// Commits tombstones for paths deleted here (children first), all in one CommitBatch.
    async fn delete_there(&mut self, deletes: Vec<(SyncPath, u64, EntryKind)>) {
        let mut paths = Vec::new();
        let mut reqs = Vec::new();
        for (path, base, kind) in deletes {
            reqs.push(CommitRequest {
                folder: self.remote.folder.clone(),
                entry: Entry::tombstone(path.clone(), kind, &self.device),
                base_version: base,
                content: None,
            });
            paths.push(path);
        }
        if reqs.is_empty() {
            return;
        }
        let outcomes = match self.commit_batch(reqs).await {
            Ok(o) => o,
            Err(e) => {
                for path in &paths {
                    self.pending(path, &e);
                }
                return;
            }
        };
        for (path, outcome) in paths.into_iter().zip(outcomes) {
            if let Err(e) = self.deleted_there(&path, outcome).await {
                self.pending(&path, &e);
            }
        }
    }

    /// Applies the server's answer to a tombstone.
    async fn deleted_there(&mut self, path: &SyncPath, outcome: BatchOutcome) -> Result<()> {
        match outcome {
            BatchOutcome::Committed {
                seq,
                version,
                committed_ns,
            } => {
                self.saw_commit(seq, path, version, committed_ns);
                info!("deleted {path} on the server");
                self.state.state.files.remove(path.as_str());
                self.report.deleted_there += 1;
            }
            BatchOutcome::Conflict(cur) if cur.deleted => {
                self.state.state.files.remove(path.as_str());
            }
            BatchOutcome::Conflict(cur) => {
                // Edited elsewhere after we synced: the edit wins, bring it back.
                info!(
                    "{path} was deleted here but edited on {}: restoring it",
                    display_device(&cur.device)
                );
                self.state.state.files.remove(path.as_str());
                match cur.kind {
                    EntryKind::File => self.download_file(&cur).await?,
                    _ => self.apply_plain(&cur)?,
                }
                self.report.downloaded += 1;
            }
            BatchOutcome::MissingChunks(_) => {
                return Err(Error::Refused {
                    what: format!("delete {path}"),
                    reason: "it asked for chunks, which a deletion has none of".into(),
                });
            }
            BatchOutcome::UnknownManifest(reason)
            | BatchOutcome::Invalid(reason)
            | BatchOutcome::NotAttempted(reason) => {
                return Err(Error::Refused {
                    what: format!("delete {path}"),
                    reason,
                });
            }
        }
        Ok(())
    }
}
