//! The client's state in `DIR/.lbsync/`: who it is, where it syncs to, how far it has read the
//! server's journal, and per path what was last synced (version, manifest, local fingerprint).
//!
//! It lives in one SQLite database, `.lbsync/state.db` (see [`db`]): the folder's settings and
//! cursor, one row a synced path, and the manifests of synced files, so edits go out as deltas
//! and downloads can copy chunks from local files. The records are held in memory while a client
//! runs; a save writes the rows that changed since the last one, in one transaction. A crash
//! leaves the previous save: the next sync re-hashes what changed since, and a commit answered
//! "conflict" with equal content is adopted silently, so no edit is lost.
//!
//! A folder synced by an older client has `state.json` and `manifests/<id>` instead: the first
//! load moves them into the database in one transaction and then deletes them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lbsync_chunkstore::{Manifest, ManifestId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod db;
mod files;

pub use files::Files;

use db::StateDb;

/// The directory, inside a synced directory, that is never synced.
pub const STATE_DIR: &str = ".lbsync";
/// The state of clients before the database (migrated on load).
const LEGACY_FILE: &str = "state.json";
/// Their manifest directory.
const LEGACY_MANIFESTS: &str = "manifests";
/// The format of `state.json`.
const LEGACY_VERSION: u32 = 1;
/// The format of the header in the database.
const STATE_VERSION: u32 = 2;

/// What kind of thing a path is, locally or on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// How a path looked on disk when it was last synced: if it still looks so, it is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// What it is.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, Unix nanoseconds.
    pub mtime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Permission bits.
    pub mode: u32,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Status-change time, Unix nanoseconds: it moves on every write and chmod, and no program
    /// can set it back, so an edit that restores size and mtime is still seen.
    #[serde(default)]
    pub ctime_ns: i64,
    /// The device (file system) the path is on.
    #[serde(default)]
    pub dev: u64,
}

/// How long after its fingerprint was taken a file may still change unseen: a write within the
/// same clock tick leaves size and times as they were. A file whose ctime is this close
/// to the moment its fingerprint was taken is hashed again on the next scan (git's "racy clean").
pub const RACY_NS: i64 = 3_000_000_000;

/// A path as last synced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    /// The server version the local copy matches.
    pub version: u64,
    /// Files: the manifest (hex id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The local fingerprint at that moment.
    pub local: Fingerprint,
    /// When that fingerprint was taken, Unix nanoseconds (0: unknown, treated as long ago).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seen_ns: i64,
    /// The journal seq of this version's commit (0: unknown): the entry at the cursor must still
    /// be what it was, or the server's journal was replaced (a store restored from a backup).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub seq: u64,
    /// When the server committed this version, by its clock (0: unknown). Tells an older version
    /// that a restored server holds from a newer edit made there since.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub committed_ns: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl Synced {
    /// A record of `version`, whose local copy has `local` as fingerprint now.
    pub fn new(version: u64, manifest: Option<ManifestId>, local: Fingerprint) -> Self {
        Self {
            version,
            manifest: manifest.map(|m| m.to_string()),
            local,
            seen_ns: now_ns(),
            seq: 0,
            committed_ns: 0,
        }
    }

    /// The manifest id, if this is a file.
    pub fn manifest_id(&self) -> Option<ManifestId> {
        self.manifest.as_deref().and_then(|m| m.parse().ok())
    }

    /// Whether the file may have changed without its fingerprint showing it: its times were
    /// within [`RACY_NS`] of the moment the fingerprint was taken.
    pub fn racy(&self) -> bool {
        // The ctime, not the mtime: the ctime is the local clock at the last change, while an
        // mtime can be anything (a peer's clock, `touch -d`), and any change moves the ctime.
        let l = &self.local;
        let changed = if l.ctime_ns != 0 {
            l.ctime_ns
        } else {
            l.mtime_ns
        };
        l.kind == Kind::File && (self.seen_ns == 0 || self.seen_ns - changed < RACY_NS)
    }
}

/// Now, Unix nanoseconds.
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// A path that could not be synced, kept until it can: shown in `status`, retried with backoff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What went wrong, in words.
    pub reason: String,
    /// The server version that could not be applied here (0: a local change).
    #[serde(default)]
    pub version: u64,
    /// How many times it failed.
    pub attempts: u32,
    /// Not retried before this time, Unix nanoseconds.
    pub retry_ns: i64,
}

impl Problem {
    /// The next failure of `prev` (or a first one): retried at the next sync three times, then
    /// after 5 s, 10 s, 20 s ... at most 10 minutes.
    pub fn next(prev: Option<&Problem>, reason: String, version: u64) -> Self {
        let attempts = prev.map_or(0, |p| p.attempts).saturating_add(1);
        let wait_s = if attempts <= 3 {
            0
        } else {
            (5u64 << (attempts - 4).min(7)).min(600)
        };
        Problem {
            reason,
            version,
            attempts,
            retry_ns: now_ns() + (wait_s as i64) * 1_000_000_000,
        }
    }

    /// A path that waits for something here (an unreadable subtree): tried at every sync, never
    /// scheduled on its own (`attempts` 0).
    pub fn waiting(reason: String, version: u64) -> Self {
        Problem {
            reason,
            version,
            attempts: 0,
            retry_ns: 0,
        }
    }

    /// Whether it is time to try again.
    pub fn due(&self) -> bool {
        self.retry_ns <= now_ns()
    }
}

/// The state of a synced folder: its header (saved as JSON in the database) and its records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// This client's random id (two clients on one machine are two devices).
    pub device_id: String,
    /// The device name.
    pub device_name: String,
    /// The server URL last used.
    pub server: String,
    /// The server folder.
    pub folder: String,
    /// For an `https://` server: the CA file trusted (else the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// For an `https://` server: the certificate fingerprint pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The file the token was read from (the token itself is never stored here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
    /// The last journal seq applied.
    pub cursor: u64,
    /// When the last sync finished, Unix nanoseconds (0: never).
    pub last_sync_ns: i64,
    /// Bytes sent to the server, all syncs.
    pub bytes_sent: u64,
    /// Bytes received from the server, all syncs.
    pub bytes_received: u64,
    /// Per path, what was last synced (rows of their own in the database).
    #[serde(skip)]
    pub files: Files,
    /// Paths whose last commit got no answer (the connection broke): the server may hold a
    /// version of ours that `files` does not know (see `Syncer::plan`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub in_doubt: BTreeSet<String>,
    /// The id in `.lbsync/marker`: the folder is synced only while that file holds it.
    #[serde(default)]
    pub marker: String,
    /// The synced directory's device and inode: a `.lbsync/` copied into another directory
    /// describes that other directory, whose files would all look deleted here.
    #[serde(default)]
    pub root_id: (u64, u64),
    /// The journal entry at `cursor`, as this folder saw it: (path, version, the server's commit
    /// time). The server must still hold it there, or its journal was replaced (a store restored
    /// from a backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_cursor: Option<(String, u64, i64)>,
    /// The next sync reads the whole journal again (ignore rules changed: entries passed over
    /// while their paths were ignored are read again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
    /// The id of the server's store this state was synced with.
    #[serde(default)]
    pub store_id: String,
    /// The server forgot what was synced (its store was replaced or restored from a backup):
    /// until a sync finishes, nothing it holds is taken as newer than what this folder synced,
    /// nothing is deleted for it, and every local path is offered to it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forgotten: bool,
    /// The server forgot deletions older than its retention, and this folder's cursor was below
    /// the newest of them (`ChangesResponse.expired_seq`): it may have missed one. Until a sync
    /// finishes, every sync replays the whole folder, and a synced path the server no longer
    /// lists is offered to it again, never deleted here. Saved before anything is applied, so a
    /// crash in the middle of the re-scan does not end it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rescan: bool,
    /// This state is new (a new folder, or one whose state was lost) and no sync has finished
    /// yet: a local file it does not know, where the server deleted the path, may be an old copy
    /// and is compared with the path's history before it is sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seeding: bool,
    /// Paths that could not be synced, with why; retried with backoff.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub problems: BTreeMap<String, Problem>,
    /// The folder is end-to-end encrypted: its key's fingerprint (the key is in
    /// `.lbsync/folder.key`). Such a folder never syncs with a server that says it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<String>,
}

/// The marker file: a synced folder is one whose `.lbsync/marker` holds its state's id.
pub const MARKER_FILE: &str = "marker";

/// The state of one synced directory, on disk.
pub struct StateStore {
    dir: PathBuf,
    /// The loaded state.
    pub state: State,
    /// How the folder's manifests are encoded (their lengths masked in an encrypted folder).
    pub codec: crate::codec::FolderCodec,
    db: StateDb,
    /// Manifests cached since the last save (written with it, so a saved record never names a
    /// manifest the database lacks).
    pending: std::sync::Mutex<std::collections::HashMap<ManifestId, Vec<u8>>>,
}

/// `state.json` of older clients: the header with the records inline.
#[derive(Deserialize)]
struct Legacy {
    #[serde(default)]
    files: std::collections::BTreeMap<String, Synced>,
    #[serde(flatten)]
    state: State,
}

/// Opens `path` for reading without following a symlink at its end.
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Reads a whole file without following a symlink at its end.
fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    open_nofollow(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Creates (or truncates) `path` for writing without following a symlink at its end.
fn create_nofollow(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Why a folder is not synced right now.
pub fn marker_problem(root: &Path, marker: &str) -> Option<String> {
    match fs::symlink_metadata(root) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Some(format!("{} is no longer a directory", root.display())),
        Err(e) => {
            return Some(format!(
                "{} is gone ({e}): was it moved, or its disk unplugged?",
                root.display()
            ));
        }
    }
    let file = StateStore::dir_of(root).join(MARKER_FILE);
    match read_nofollow(&file) {
        Ok(bytes) if marker_id(&bytes) == Some(marker) => None,
        Ok(_) => Some(format!(
            "{} belongs to another synced folder",
            file.display()
        )),
        Err(e) => Some(format!(
            "its marker {} cannot be read ({e}): was the folder replaced or its .lbsync/ removed?",
            file.display()
        )),
    }
}

fn marker_id(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .map(str::trim)
}

impl StateStore {
    /// `DIR/.lbsync`.
    pub fn dir_of(root: &Path) -> PathBuf {
        root.join(STATE_DIR)
    }

    /// Loads the state of `root`, or a fresh one (and its marker) if `root` was never synced. A
    /// state whose marker is missing or another folder's is refused: the folder is not the one
    /// the state describes, and syncing it would read every file as deleted.
    pub fn load(root: &Path) -> Result<Self> {
        let dir = Self::dir_of(root);
        match fs::symlink_metadata(&dir) {
            Ok(md) if !md.is_dir() => {
                return Err(Error::Usage(format!(
                    "{} is not a directory (a symlink or a file): lbsync keeps its state there; \
                     move it away",
                    dir.display()
                )));
            }
            _ => {}
        }
        fs::create_dir_all(dir.join("tmp"))
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        let db = StateDb::open(&dir)?;
        let legacy = dir.join(LEGACY_FILE);
        let mut pending = std::collections::HashMap::new();
        let mut migrated = false;
        let mut state = match saved_state(&db)? {
            Some(state) => {
                // A migration that committed but did not get to delete what it moved.
                remove_legacy(&dir);
                state
            }
            None => match legacy_state(&legacy)? {
                Some(mut state) => {
                    for id in state.files.values().filter_map(Synced::manifest_id) {
                        let file = dir.join(LEGACY_MANIFESTS).join(id.to_string());
                        if let Ok(bytes) = read_nofollow(&file) {
                            pending.insert(id, bytes);
                        }
                    }
                    migrated = true;
                    state.files.mark_all_changed();
                    State {
                        version: STATE_VERSION,
                        ..state
                    }
                }
                None => State {
                    version: STATE_VERSION,
                    device_id: new_device_id(root),
                    seeding: true,
                    ..State::default()
                },
            },
        };
        if let Some(why) = (!state.marker.is_empty())
            .then(|| marker_problem(root, &state.marker))
            .flatten()
        {
            return Err(Error::FolderStopped {
                root: root.to_path_buf(),
                reason: why,
            });
        }
        let root_id = {
            use std::os::unix::fs::MetadataExt;
            let md = fs::symlink_metadata(root)
                .map_err(Error::io(format!("opening {}", root.display())))?;
            (md.dev(), md.ino())
        };
        if state.root_id != (0, 0) && state.root_id != root_id {
            return Err(Error::FolderStopped {
                root: root.to_path_buf(),
                reason: format!(
                    "its {STATE_DIR}/ was made for another directory (copied, or the folder was \
                     moved to another disk); to sync it as a new folder, move {} away",
                    dir.display()
                ),
            });
        }
        state.root_id = root_id;
        let new_marker = state.marker.is_empty();
        if new_marker {
            // A new folder, or a state from before markers: mark it now.
            state.marker = new_device_id(&dir) + &new_device_id(root);
        }
        let mut store = Self {
            dir,
            state,
            codec: Default::default(),
            db,
            pending: std::sync::Mutex::new(pending),
        };
        if new_marker {
            store.write_marker()?;
        }
        if new_marker || migrated {
            store.save()?;
        }
        if migrated {
            remove_legacy(&store.dir);
        }
        Ok(store)
    }

    /// The saved state of `root` without taking it over: nothing is created, migrated or
    /// written (`None`: never synced, or the state cannot be read).
    pub fn peek(root: &Path) -> Option<State> {
        let dir = Self::dir_of(root);
        match StateDb::open_existing(&dir).ok()? {
            Some(db) => saved_state(&db).ok()?,
            None => legacy_state(&dir.join(LEGACY_FILE)).ok()?,
        }
    }

    /// Whether `root` was ever synced (it has a saved state, in the database or older).
    pub fn exists(root: &Path) -> bool {
        let dir = Self::dir_of(root);
        dir.join(db::DB_FILE).exists() || dir.join(LEGACY_FILE).exists()
    }

    fn write_marker(&self) -> Result<()> {
        let path = self.dir.join(MARKER_FILE);
        let text = format!(
            "lbsync folder marker: this directory is synced while this file holds its id.\n\
             id: {}\n",
            self.state.marker
        );
        let write = || -> std::io::Result<()> {
            let mut f = create_nofollow(&path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        };
        write().map_err(Error::io(format!("writing {}", path.display())))
    }

    /// `DIR/.lbsync` of this state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Saves the header, the records changed since the last save and the manifests cached
    /// since, in one transaction.
    pub fn save(&mut self) -> Result<()> {
        let header = serde_json::to_vec(&self.state).map_err(|e| Error::State {
            path: self.db.path().to_path_buf(),
            reason: e.to_string(),
        })?;
        let pending = self.pending.get_mut().unwrap_or_else(|e| e.into_inner());
        self.db.save(&db::Save {
            header: &header,
            files: self.state.files.changes(),
            manifests: pending,
        })?;
        self.state.files.saved();
        pending.clear();
        Ok(())
    }

    /// Where files are moved that a lost state would otherwise have brought back (see
    /// `Syncer::bury`): `.lbsync/trash/`.
    pub fn trash_dir(&self) -> PathBuf {
        self.dir.join("trash")
    }

    /// A temp file name not taken (`<stem>.<n>` in the temp directory).
    pub fn new_tmp(&self, stem: &str) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = self
                .tmp_dir()
                .join(format!("{stem}.{}-{n}", std::process::id()));
            if fs::symlink_metadata(&path).is_err()
                && fs::symlink_metadata(crate::place::origin_file(&path)).is_err()
            {
                return path;
            }
        }
    }

    /// Where temporary downloads go (same file system as the synced files, so renames are atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Deletes downloads that interrupted runs left half-written in the temp directory (files
    /// untouched for an hour). Files with an origin record (moved aside, or displaced by a swap)
    /// are never aged out: `Syncer::recover_tmp` puts them back first.
    pub fn clear_stale_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        let hour = std::time::Duration::from_secs(3600);
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "origin")
                || crate::place::origin_of(&path).is_some()
            {
                continue;
            }
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > hour);
            if stale {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Caches a manifest of a synced file (written with the next save).
    pub fn put_manifest(&self, m: &Manifest) -> Result<()> {
        self.pending().entry(m.id()).or_insert_with(|| m.encode());
        Ok(())
    }

    /// A cached manifest.
    pub fn manifest(&self, id: &ManifestId) -> Option<Manifest> {
        let pending = self.pending().get(id).cloned();
        let bytes = pending.or_else(|| self.db.manifest(id))?;
        self.codec
            .decode_manifest(&bytes)
            .ok()
            .filter(|m| m.id() == *id)
    }

    /// The manifests cached since the last save (a panic while they were held leaves a map that
    /// is still whole).
    fn pending(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ManifestId, Vec<u8>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` with each synced file whose manifest is cached, reading them in one scan of
    /// the database (the records in memory decide which manifest is a file's now).
    pub fn each_manifest(&self, mut f: impl FnMut(&str, Manifest)) {
        let scan = self.db.each_file_manifest(|path, bytes| {
            let Some(want) = self.state.files.get(path).and_then(Synced::manifest_id) else {
                return;
            };
            if let Some(m) = self
                .codec
                .decode_manifest(bytes)
                .ok()
                .filter(|m| m.id() == want)
            {
                f(path, m);
            }
        });
        if let Err(e) = scan {
            tracing::warn!("reading the cached manifests: {e}");
        }
    }

    /// Deletes cached manifests no synced file uses any more (as saved).
    pub fn prune_manifests(&self) {
        if let Err(e) = self.db.prune_manifests() {
            tracing::warn!("pruning the cached manifests: {e}");
        }
    }
}

/// The state saved in `db` (`None`: nothing was ever saved there).
fn saved_state(db: &StateDb) -> Result<Option<State>> {
    let Some(json) = db.header()? else {
        return Ok(None);
    };
    let mut state: State = serde_json::from_slice(&json).map_err(|e| Error::State {
        path: db.path().to_path_buf(),
        reason: format!("its header is not the JSON it should be ({e})"),
    })?;
    if state.version != STATE_VERSION {
        return Err(Error::State {
            path: db.path().to_path_buf(),
            reason: format!("format version {} is not {STATE_VERSION}", state.version),
        });
    }
    state.files = Files::loaded(db.files()?);
    Ok(Some(state))
}

/// The state an older client kept in `path` (`state.json`), records included, loaded as saved
/// (`None`: there is none).
fn legacy_state(path: &Path) -> Result<Option<State>> {
    let bytes = match read_nofollow(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
    };
    let old: Legacy = serde_json::from_slice(&bytes).map_err(|e| Error::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if old.state.version != LEGACY_VERSION {
        return Err(Error::State {
            path: path.to_path_buf(),
            reason: format!(
                "format version {} is not {LEGACY_VERSION}",
                old.state.version
            ),
        });
    }
    Ok(Some(State {
        files: Files::loaded(old.files),
        ..old.state
    }))
}

/// Deletes what an older client kept in `state.json` and `manifests/`, once it is in the
/// database.
fn remove_legacy(dir: &Path) {
    let _ = fs::remove_file(dir.join(LEGACY_FILE));
    let _ = fs::remove_file(dir.join("state.json.tmp"));
    let _ = fs::remove_dir_all(dir.join(LEGACY_MANIFESTS));
}

/// One process per folder: an exclusive lock on `.lbsync/lock`, held while a client syncs it.
#[derive(Debug)]
pub struct FolderLock {
    _file: fs::File,
}

impl FolderLock {
    /// Takes the lock of `root`, waiting up to `wait` for another client to let go of it.
    pub fn acquire(root: &Path, wait: std::time::Duration) -> Result<Self> {
        use rustix::fs::{FlockOperation, flock};
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = StateStore::dir_of(root);
        if fs::symlink_metadata(&dir).is_err() {
            fs::create_dir(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let path = dir.join("lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(Error::io(format!("opening {}", path.display())))?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    return Err(Error::Busy {
                        root: root.to_path_buf(),
                        pid: pid.trim().to_owned(),
                    });
                }
                Err(e) => {
                    return Err(Error::io(format!("locking {}", path.display()))(e.into()));
                }
            }
        }
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        Ok(Self { _file: file })
    }
}

fn new_device_id(root: &Path) -> String {
    let seed = format!(
        "{}:{}:{:?}",
        std::process::id(),
        root.display(),
        std::time::SystemTime::now()
    );
    blake3::hash(seed.as_bytes()).to_hex()[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_bad_state_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::load(dir.path()).unwrap();
        assert_eq!(s.state.device_id.len(), 8);
        s.state.cursor = 42;
        s.state.files.insert(
            "a.txt".into(),
            Synced::new(
                3,
                Some(Manifest::empty().id()),
                Fingerprint {
                    kind: Kind::File,
                    size: 0,
                    mtime_ns: 1,
                    inode: 2,
                    mode: 0o644,
                    target: None,
                    ctime_ns: 1,
                    dev: 1,
                },
            ),
        );
        s.put_manifest(&Manifest::empty()).unwrap();
        s.save().unwrap();
        let back = StateStore::load(dir.path()).unwrap();
        assert_eq!(back.state.cursor, 42);
        assert_eq!(back.state.files["a.txt"].version, 3);
        assert_eq!(
            back.manifest(&Manifest::empty().id()),
            Some(Manifest::empty())
        );

        drop(back);
        drop(s);
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let _ = fs::remove_file(dir.path().join(".lbsync").join(f));
        }
        fs::write(dir.path().join(".lbsync/state.db"), vec![b'x'; 4096]).unwrap();
        let err = StateStore::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("state.db is unusable"), "{err}");
    }

    #[test]
    fn an_older_clients_state_json_and_manifests_move_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join(STATE_DIR);
        fs::create_dir_all(state_dir.join(LEGACY_MANIFESTS)).unwrap();
        let m = Manifest::empty();
        fs::write(
            state_dir.join(LEGACY_MANIFESTS).join(m.id().to_string()),
            m.encode(),
        )
        .unwrap();
        // What a client before the database wrote (fields it had; the rest default).
        let json = serde_json::json!({
            "version": 1,
            "device_id": "0123abcd",
            "device_name": "laptop",
            "server": "http://127.0.0.1:1",
            "folder": "docs",
            "cursor": 17,
            "last_sync_ns": 5,
            "bytes_sent": 1,
            "bytes_received": 2,
            "marker": "",
            "files": {
                "a.txt": {
                    "version": 4,
                    "manifest": m.id().to_string(),
                    "local": {"kind": "file", "size": 0, "mtime_ns": 9, "inode": 3, "mode": 420},
                    "seq": 12
                },
                "sub": {
                    "version": 2,
                    "local": {"kind": "dir", "size": 0, "mtime_ns": 1, "inode": 4, "mode": 493}
                }
            }
        });
        fs::write(state_dir.join(LEGACY_FILE), json.to_string()).unwrap();

        let s = StateStore::load(dir.path()).unwrap();
        assert_eq!((s.state.cursor, s.state.folder.as_str()), (17, "docs"));
        assert_eq!(s.state.device_id, "0123abcd");
        assert_eq!(s.state.files["a.txt"].version, 4);
        assert_eq!(s.state.files["a.txt"].seq, 12);
        assert_eq!(s.state.files["sub"].local.kind, Kind::Dir);
        assert_eq!(s.manifest(&m.id()), Some(m.clone()));
        assert!(!state_dir.join(LEGACY_FILE).exists(), "state.json stays");
        assert!(
            !state_dir.join(LEGACY_MANIFESTS).exists(),
            "manifests/ stays"
        );
        drop(s);

        // Loaded again from the database alone.
        let s = StateStore::load(dir.path()).unwrap();
        assert_eq!(s.state.files.len(), 2);
        assert_eq!(s.manifest(&m.id()), Some(m));
        let peeked = StateStore::peek(dir.path()).unwrap();
        assert_eq!(peeked.cursor, 17);
        assert_eq!(peeked.files.len(), 2);
    }

    #[test]
    fn a_save_writes_the_changes_and_a_reload_sees_exactly_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::load(dir.path()).unwrap();
        let fp = |inode| Fingerprint {
            kind: Kind::File,
            size: 1,
            mtime_ns: 1,
            inode,
            mode: 0o644,
            target: None,
            ctime_ns: 1,
            dev: 1,
        };
        for i in 0..100 {
            s.state
                .files
                .insert(format!("f{i}"), Synced::new(1, None, fp(i)));
        }
        s.save().unwrap();
        s.state.files.remove("f3");
        s.state.files.get_mut("f4").unwrap().version = 9;
        s.state
            .files
            .insert("new".into(), Synced::new(2, None, fp(7)));
        assert_eq!(s.state.files.changes().len(), 3);
        s.save().unwrap();
        assert!(s.state.files.changes().is_empty());
        drop(s);
        let s = StateStore::load(dir.path()).unwrap();
        assert_eq!(s.state.files.len(), 100);
        assert!(!s.state.files.contains_key("f3"));
        assert_eq!(s.state.files["f4"].version, 9);
        assert_eq!(s.state.files["new"].version, 2);
    }
}
