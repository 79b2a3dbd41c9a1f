//! The offline commands: `fsck`, `gc` and `stats` (the server must not be running: sled locks the
//! store).

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use lbsync_chunkstore::{
    ChunkId, ChunkStore, FsckProblem, FsckReport, GcOptions, GcReport, ManifestId, PackStore,
    StoreStats,
};
use lbsync_cli::units::{bytes, count};
use serde_json::{Value, json};

use crate::backend::Backend;
use crate::error::Result;
use crate::folders::SledFolders;
use crate::meta::FolderMeta;

/// What `lbsync-server fsck` found.
#[derive(Debug)]
pub struct Fsck {
    /// The chunk store's report.
    pub store: FsckReport,
    /// File versions whose manifest or chunks are missing.
    pub damaged_files: Vec<DamagedFile>,
    /// Current and retained file versions checked.
    pub files_checked: u64,
}

impl Fsck {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.store.is_clean() && self.damaged_files.is_empty()
    }
}

impl fmt::Display for Fsck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.store;
        writeln!(
            f,
            "checked {}, {}, {}, {}",
            count(s.packs, "pack"),
            count(s.records, "record"),
            count(s.index_entries, "index entry"),
            count(self.files_checked, "file version")
        )?;
        for p in &s.problems {
            writeln!(f, "problem: {p}")?;
        }
        for d in &self.damaged_files {
            writeln!(f, "damaged file: {d}")?;
        }
        if s.repaired {
            writeln!(f, "repaired the index from the packs")?;
        }
        if self.is_clean() {
            write!(f, "store is clean")
        } else if s.repaired {
            write!(
                f,
                "files listed as damaged lost data: restore them from a client that still has them (sync it again)"
            )
        } else {
            write!(f, "store has problems: run `lbsync-server fsck --repair`")
        }
    }
}

/// A file version whose manifest or chunks are missing; shown as `folder/path vN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedFile {
    /// The folder.
    pub folder: String,
    /// The file's path in it.
    pub path: String,
    /// The version.
    pub version: u64,
}

impl fmt::Display for DamagedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} v{}", self.folder, self.path, self.version)
    }
}

/// Now, as RFC 3339 in UTC: the `at` of the `--json` reports.
fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn problem_json(p: &FsckProblem) -> Value {
    let mut v = match p {
        FsckProblem::BadPack { pack, what } => {
            json!({ "kind": "bad_pack", "pack": pack, "what": what })
        }
        FsckProblem::DamagedRecord {
            pack,
            offset,
            id,
            what,
        } => json!({
            "kind": "damaged_record",
            "pack": pack,
            "offset": offset,
            "chunk_id": id.map(|i| i.to_string()),
            "what": what,
        }),
        FsckProblem::TornTail {
            pack,
            offset,
            bytes,
        } => json!({ "kind": "torn_tail", "pack": pack, "offset": offset, "bytes": bytes }),
        FsckProblem::BadEntry {
            id,
            pack,
            offset,
            copy_elsewhere,
        } => json!({
            "kind": "bad_entry",
            "chunk_id": id.to_string(),
            "pack": pack,
            "offset": offset,
            "copy_elsewhere": copy_elsewhere,
        }),
        _ => json!({ "kind": "other" }),
    };
    v["message"] = Value::String(p.to_string());
    v
}

impl Fsck {
    /// The report as `fsck --json` prints it (field names are stable; see the README).
    pub fn to_json(&self) -> Value {
        let s = &self.store;
        json!({
            "at": now_rfc3339(),
            "clean": self.is_clean(),
            "repaired": s.repaired,
            "packs": s.packs,
            "records": s.records,
            "index_entries": s.index_entries,
            "files_checked": self.files_checked,
            "problems": s.problems.iter().map(problem_json).collect::<Vec<_>>(),
            "lost_chunks": s.lost.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "damaged_files": self
                .damaged_files
                .iter()
                .map(|d| json!({ "folder": d.folder, "path": d.path, "version": d.version }))
                .collect::<Vec<_>>(),
        })
    }
}

/// Checks the chunk store and that every retained file version's manifest and chunks are present.
pub fn fsck(store: &PackStore, repair: bool) -> Result<Fsck> {
    let report = store.fsck(repair)?;
    let folders = SledFolders::open(store.db())?;
    let mut damaged = Vec::new();
    let mut checked = 0;
    for folder in folders.names()? {
        folders.prune_history(&folder, usize::MAX, i64::MAX, true, &mut |e| {
            let Some(mid) = e.manifest.filter(|_| !e.deleted) else {
                return;
            };
            checked += 1;
            let sound = match store.get_manifest(&mid) {
                Ok(Some(m)) => {
                    let ids: Vec<_> = m.chunks().iter().map(|c| c.id).collect();
                    store.missing(&ids).is_ok_and(|missing| missing.is_empty())
                }
                _ => false,
            };
            if !sound {
                damaged.push(DamagedFile {
                    folder: folder.clone(),
                    path: e.path.to_string(),
                    version: e.version,
                });
            }
        })?;
    }
    Ok(Fsck {
        store: report,
        damaged_files: damaged,
        files_checked: checked,
    })
}

/// Checks a store on an object store, while its servers serve: every retained file version's
/// manifest and chunks are read back (each chunk re-hashed against its id), so a chunk whose pack
/// object is gone or damaged is found and named in `lost`, and the versions that need it in
/// `damaged_files`. The counts of packs and index entries come from the shared index. There is
/// nothing to repair in place: a lost chunk comes back when a client that still has the file
/// uploads it again.
pub fn fsck_shared(backend: &Backend) -> Result<Fsck> {
    /// Chunks read back in one batch.
    const BATCH: usize = 256;
    let store = backend.chunks.as_ref();
    let stats = store.stats()?;
    let mut report = FsckReport {
        packs: stats.packs,
        index_entries: stats.chunks,
        ..FsckReport::default()
    };
    let (mut damaged, mut checked) = (Vec::new(), 0u64);
    let mut sound: HashSet<ChunkId> = HashSet::new();
    let mut lost: HashSet<ChunkId> = HashSet::new();
    // One chunk at a time when a batch fails: which of them is damaged.
    let mut read_back = |ids: &[ChunkId], sound: &mut HashSet<ChunkId>| -> bool {
        let got = match store.get_batch(ids) {
            Ok(got) => got,
            Err(_) => ids.iter().map(|id| store.get(id).ok().flatten()).collect(),
        };
        let mut whole = true;
        for (id, bytes) in ids.iter().zip(got) {
            if bytes.is_some() {
                sound.insert(*id);
            } else {
                lost.insert(*id);
                whole = false;
            }
        }
        whole
    };
    for folder in backend.folders.names()? {
        let mut versions = Vec::new();
        backend
            .folders
            .prune_history(&folder, usize::MAX, i64::MAX, true, &mut |e| {
                if let Some(mid) = e.manifest.filter(|_| !e.deleted) {
                    versions.push((e.path.to_string(), e.version, mid));
                }
            })?;
        for (path, version, mid) in versions {
            checked += 1;
            let whole = match store.get_manifest(&mid) {
                Ok(Some(m)) => {
                    let mut unread: Vec<ChunkId> = m.chunks().iter().map(|c| c.id).collect();
                    unread.sort_unstable();
                    unread.dedup();
                    unread.retain(|id| !sound.contains(id));
                    let mut whole = true;
                    for batch in unread.chunks(BATCH) {
                        whole &= read_back(batch, &mut sound);
                    }
                    whole
                }
                _ => false,
            };
            if !whole {
                damaged.push(DamagedFile {
                    folder: folder.clone(),
                    path,
                    version,
                });
            }
        }
    }
    report.records = sound.len() as u64;
    report.lost = lost.into_iter().collect();
    report.lost.sort_unstable();
    Ok(Fsck {
        store: report,
        damaged_files: damaged,
        files_checked: checked,
    })
}

/// How long old versions are kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Keep at least this many versions of each path (the current one included).
    pub keep_versions: usize,
    /// And every version younger than this.
    pub keep_for: Duration,
    /// A deletion (tombstone) older than this is forgotten, with every kept version of its
    /// path: keep it longer than any device may stay offline. A device away longer re-scans
    /// safely (it offers its copy again; see `Folders::expire_tombstones`).
    pub keep_tombstones: Duration,
}

/// The default of [`Retention::keep_tombstones`]: 180 days.
pub const KEEP_TOMBSTONES: Duration = Duration::from_secs(180 * 24 * 3600);

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_versions: 10,
            keep_for: Duration::from_secs(30 * 24 * 3600),
            keep_tombstones: KEEP_TOMBSTONES,
        }
    }
}

/// What `lbsync-server gc` did.
#[derive(Debug)]
pub struct Gc {
    /// File versions kept.
    pub versions_kept: u64,
    /// File versions dropped from history.
    pub versions_pruned: u64,
    /// Tombstones forgotten past their retention, over all folders.
    pub tombstones_expired: u64,
    /// Superseded journal records dropped (journals written before one record a path).
    pub journal_records_dropped: u64,
    /// The chunk store's report.
    pub store: GcReport,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl fmt::Display for Gc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.store;
        let verb = if self.dry_run { "would " } else { "" };
        write!(
            f,
            "{verb}forget {} past their retention; {verb}keep {} and drop {}; {verb}sweep {} \
             ({}), keep {} stored within the grace period; {verb}rewrite {} and delete {}, \
             freeing {}",
            count(self.tombstones_expired, "tombstone"),
            count(self.versions_kept, "version"),
            self.versions_pruned,
            count(s.swept_chunks, "unreferenced chunk"),
            bytes(s.swept_bytes),
            count(s.kept_in_grace, "recent chunk"),
            count(s.packs_rewritten, "pack"),
            s.packs_deleted,
            bytes(s.bytes_reclaimed)
        )
    }
}

impl Gc {
    /// The report as `gc --json` prints it (field names are stable; see the README).
    pub fn to_json(&self) -> Value {
        let s = &self.store;
        json!({
            "at": now_rfc3339(),
            "dry_run": self.dry_run,
            "versions_kept": self.versions_kept,
            "versions_pruned": self.versions_pruned,
            "tombstones_expired": self.tombstones_expired,
            "journal_records_dropped": self.journal_records_dropped,
            "live_chunks": s.live_chunks,
            "swept_chunks": s.swept_chunks,
            "swept_bytes": s.swept_bytes,
            "kept_in_grace": s.kept_in_grace,
            "packs_rewritten": s.packs_rewritten,
            "packs_deleted": s.packs_deleted,
            "bytes_reclaimed": s.bytes_reclaimed,
        })
    }
}

/// Forgets tombstones older than `retention.keep_tombstones` and compacts journals written
/// before one record a path, drops history beyond `retention`, then collects the chunks no kept
/// version references.
pub fn gc(backend: &Backend, retention: Retention, grace: Duration, dry_run: bool) -> Result<Gc> {
    let (folders, store) = (&backend.folders, &backend.chunks);
    let keep_ns = i64::try_from(retention.keep_for.as_nanos()).unwrap_or(i64::MAX);
    let keep_tombstones_ns =
        i64::try_from(retention.keep_tombstones.as_nanos()).unwrap_or(i64::MAX);
    let cutoff_ns = crate::folders::now_ns().saturating_sub(keep_tombstones_ns);
    let mut live: HashSet<ManifestId> = HashSet::new();
    let (mut kept, mut pruned, mut expired, mut dropped) = (0, 0, 0, 0);
    for folder in folders.names()? {
        // Before the history is pruned: an expired path's versions are gone, and so are the
        // chunks only they held.
        expired += folders.expire_tombstones(&folder, cutoff_ns, dry_run)?.0;
        dropped += folders.compact_journal(&folder, dry_run)?;
        let (k, p) = folders.prune_history(
            &folder,
            retention.keep_versions.max(1),
            keep_ns,
            dry_run,
            &mut |e| {
                live.extend(e.manifest.filter(|_| !e.deleted));
            },
        )?;
        kept += k;
        pruned += p;
    }
    let opts = GcOptions {
        grace,
        dry_run,
        ..GcOptions::default()
    };
    let report = store.gc(&mut live.into_iter(), &opts)?;
    if !dry_run {
        // Scopes of collected chunks would only take space (every "present" asks the store too).
        let dropped = backend.scopes.prune(store.as_ref())?;
        if dropped > 0 {
            tracing::info!("dropped {dropped} folder scope entries of collected chunks");
        }
    }
    Ok(Gc {
        versions_kept: kept,
        versions_pruned: pruned,
        tombstones_expired: expired,
        journal_records_dropped: dropped,
        store: report,
        dry_run,
    })
}

/// What `lbsync-server stats` shows.
#[derive(Debug)]
pub struct Stats {
    /// The store's id, as the handshake announces it.
    pub store_id: String,
    /// The chunk store's sizes.
    pub store: StoreStats,
    /// Folders.
    pub folders: u64,
    /// Of them, end-to-end encrypted.
    pub encrypted_folders: u64,
    /// Current files (not deleted) over all folders.
    pub files: u64,
    /// Their total size, as far as the server knows it: an encrypted folder's sizes are sealed,
    /// and count 0.
    pub logical_bytes: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.store;
        if self.store_id.is_empty() {
            // An old store looked at read-only: the next server start gives it one.
            writeln!(
                f,
                "store id:       none yet (assigned at the server's next start)"
            )?;
        } else {
            writeln!(f, "store id:       {}", self.store_id)?;
        }
        if self.encrypted_folders > 0 {
            writeln!(
                f,
                "folders:        {} ({} encrypted: their files' sizes are sealed and not counted)",
                self.folders, self.encrypted_folders
            )?;
        } else {
            writeln!(f, "folders:        {}", self.folders)?;
        }
        writeln!(
            f,
            "files:          {} ({})",
            self.files,
            bytes(self.logical_bytes)
        )?;
        writeln!(
            f,
            "chunks:         {} ({} uncompressed)",
            s.chunks,
            bytes(s.raw_bytes)
        )?;
        writeln!(
            f,
            "stored on disk: {} in {}",
            bytes(s.disk_bytes),
            count(s.packs, "pack")
        )?;
        write!(
            f,
            "dedup ratio:    {:.2} (current files' bytes per byte on disk)",
            s.dedup_ratio(self.logical_bytes)
        )
    }
}

impl Stats {
    /// The report as `stats --json` prints it (field names are stable; see the README).
    pub fn to_json(&self) -> Value {
        let s = &self.store;
        json!({
            "at": now_rfc3339(),
            "store_id": (!self.store_id.is_empty()).then_some(&self.store_id),
            "folders": self.folders,
            "encrypted_folders": self.encrypted_folders,
            "files": self.files,
            "logical_bytes": self.logical_bytes,
            "chunks": s.chunks,
            "raw_bytes": s.raw_bytes,
            "stored_bytes": s.stored_bytes,
            "disk_bytes": s.disk_bytes,
            "packs": s.packs,
            "dedup_ratio": s.dedup_ratio(self.logical_bytes),
        })
    }
}

/// Counts what the store holds.
pub fn stats(backend: &Backend) -> Result<Stats> {
    let (folders, store) = (&backend.folders, &backend.chunks);
    let names = folders.names()?;
    let (mut files, mut logical) = (0, 0);
    for folder in &names {
        for e in folders.current_entries(folder)? {
            if e.manifest.is_some() && !e.deleted {
                files += 1;
                logical += e.size;
            }
        }
    }
    Ok(Stats {
        store_id: backend.store_id.clone(),
        store: store.stats()?,
        folders: names.len() as u64,
        encrypted_folders: folders.encrypted_count() as u64,
        files,
        logical_bytes: logical,
    })
}
