//! [`PackStore`]: chunk bytes in append-only pack files, a sled index beside them.
//!
//! ```text
//! STORE/
//!   packs/00000001.pack   records appended until the pack passes ~256 MiB, then the next
//!   packs/00000002.pack
//!   index/                sled: tree `chunks` (id → where), tree `meta` (format, chunk params),
//!                         and whatever trees the server keeps there for its own metadata
//! ```
//!
//! # Durability
//! [`ChunkStore::insert_batch`] appends the batch's records to the current pack, `fdatasync`s it,
//! and returns; a thread of the store's then writes the index entries and the pack's watermark in
//! one sled batch (until then reads find the entries in memory; see `pack_store/behind.rs`). The
//! pack is the source of truth and the index a cache of it: on open, each pack is scanned from its
//! watermark, records past it that check out (header checksum, payload hashing to the id) are
//! indexed, damaged bytes in the middle are skipped up to the next sound record (found by its
//! `LBCR` magic and checksum), and only a torn tail, with nothing sound after it, is truncated. So
//! after a crash at any instant (kill -9 or power loss), every chunk whose insert returned reads
//! back, and every indexed chunk reads back with the right hash; damage on disk loses the damaged
//! records only. sled's own writes are flushed on a timer; a lost index update is redone from the
//! pack. A store opened read-only ([`StoreOptions::read_only`]) changes no pack and keeps what
//! its scan finds in memory.
//!
//! # Damage
//! A read whose record does not check out returns [`Error::Corrupt`] and forgets the chunk (its
//! index entry and membership go, durably), so `missing` reports it and the next insert of it,
//! an upload from any client that still has the bytes, stores a sound copy. An I/O error that
//! may pass forgets nothing.
//!
//! # Concurrency
//! Handles are `Clone` and shared between threads. Appends are serialised by one writer lock
//! (compression happens before taking it); reads use positional reads and run in parallel.
//! Garbage collection and fsck hold the writer lock. One process at a time: sled locks the index.

mod behind;
mod direct;
mod fsck;
mod gc;
mod index;
mod present;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::id::{ChunkId, ManifestId};
use crate::pack::{
    PACK_HEADER_LEN, PackReader, RECORD_HEADER_LEN, Record, RecordAt, RecordHeader,
    check_pack_header, decode_payload, pack_header,
};
use crate::params::ChunkParams;
use crate::store::{ChunkStore, GcOptions, GcReport, Inserted, StoreStats};

use behind::{Appended, Indexer};
use direct::{DIRECT_MIN, DirectAppender};
pub use fsck::{FsckProblem, FsckReport};
use index::{IndexEntry, chunk_key, watermark_key};
use present::Presence;

/// Pack files kept open for reading at most.
const MAX_OPEN_PACKS: usize = 128;

/// The store format version kept in the `meta` tree.
const STORE_FORMAT: u32 = 1;

/// How a [`PackStore`] is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Chunking parameters for a new store; an existing store keeps the ones it was created with.
    pub params: ChunkParams,
    /// sled's cache size in bytes; it bounds most of the store's memory.
    pub cache_capacity: u64,
    /// A pack is closed and the next one started once it reaches this size.
    pub pack_target: u64,
    /// How long to wait for the index's lock, which sled releases a moment after a close.
    pub lock_wait: std::time::Duration,
    /// Open an existing store only to read it (`fsck` without repair, `stats`, `gc --dry-run`):
    /// no pack is created, written or truncated, nothing is written to the index (beyond what
    /// sled itself does to open), records found past a watermark are indexed in memory only, and
    /// inserts, repairs and collections fail with [`Error::ReadOnly`].
    pub read_only: bool,
    /// Create the store if `dir` holds none; when false, such an open fails with
    /// [`Error::NoStore`] and creates nothing (read-only opens never create).
    pub create: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            params: ChunkParams::DEFAULT,
            cache_capacity: 64 << 20,
            pack_target: 256 << 20,
            lock_wait: std::time::Duration::from_secs(3),
            read_only: false,
            create: true,
        }
    }
}

/// What opening the store had to repair after an unclean stop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The store did not exist and was created.
    pub created: bool,
    /// Records found past their pack's watermark and indexed.
    pub reindexed: u64,
    /// Torn tails cut off: (pack, offset, bytes removed). Only bytes with no sound record after
    /// them are cut: nothing acknowledged.
    pub truncated: Vec<(u32, u64, u64)>,
    /// Damaged bytes in the middle of a pack, skipped: (pack, offset, bytes). The records after
    /// them were kept; a chunk whose record lay there is missing, so clients upload it again.
    pub skipped: Vec<(u32, u64, u64)>,
    /// Sound records found after a skipped range and indexed.
    pub salvaged: u64,
    /// Torn tails a read-only open left in place (the next writable open cuts them).
    pub torn_left: Vec<(u32, u64, u64)>,
}

/// The durable chunk store. See the module docs for the layout and the durability contract.
#[derive(Clone)]
pub struct PackStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    packs_dir: PathBuf,
    db: sled::Db,
    index: sled::Tree,
    /// A filter and a cache in front of `index`, for fast membership tests (see `present.rs`).
    present: Presence,
    /// Writes index entries behind the packs.
    indexer: Indexer,
    params: ChunkParams,
    pack_target: u64,
    /// `None` when opened read-only.
    writer: Mutex<Option<Writer>>,
    /// Entries of records a read-only open found past their pack's watermark: in memory only.
    unindexed: HashMap<ChunkId, IndexEntry>,
    read_only: bool,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    recovery: RecoveryReport,
    /// See [`PackStore::store_id`].
    store_id: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Nothing is lost without this (the packs are the truth), but reopening is faster.
        let _ = self.indexer.settle();
        let _ = self.db.flush();
    }
}

/// The pack being appended to.
struct Writer {
    pack: u32,
    file: File,
    len: u64,
    /// Large appends go through this handle, past the page cache; `None` where direct I/O is
    /// unavailable.
    direct: Option<DirectAppender>,
}

impl std::fmt::Debug for PackStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackStore")
            .field("dir", &self.inner.dir)
            .field("params", &self.inner.params)
            .finish()
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything that can panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PackStore {
    /// Opens (or creates) the store in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// Opens the existing store in `dir`; fails with [`Error::NoStore`], creating nothing, when
    /// `dir` holds none.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(
            dir,
            &StoreOptions {
                create: false,
                ..StoreOptions::default()
            },
        )
    }

    /// Whether `dir` holds a store (its index and packs directories).
    pub fn exists(dir: impl AsRef<Path>) -> bool {
        let dir = dir.as_ref();
        dir.join("index").is_dir() && dir.join("packs").is_dir()
    }

    /// Opens the existing store in `dir` only to read it; see [`StoreOptions::read_only`].
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(
            dir,
            &StoreOptions {
                read_only: true,
                ..StoreOptions::default()
            },
        )
    }

    /// Whether the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Opens (or creates) the store in `dir`, recovering from an unclean stop if needed.
    pub fn open_with(dir: impl AsRef<Path>, opts: &StoreOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let packs_dir = dir.join("packs");
        if opts.read_only || !opts.create {
            if !Self::exists(&dir) {
                return Err(Error::NoStore { dir });
            }
        } else {
            fs::create_dir_all(&packs_dir).map_err(Error::io(format!(
                "creating store directory {}",
                packs_dir.display()
            )))?;
        }
        let db = open_index(&dir.join("index"), opts).map_err(|e| {
            if e.to_string().contains("could not acquire lock") {
                return Error::Locked { dir: dir.clone() };
            }
            Error::BadStore {
                dir: dir.clone(),
                what: format!(
                    "cannot open the index ({e}); if another lbsync-server uses this store, stop \
                     it first; if the index is damaged, run `lbsync-server fsck --repair`"
                ),
            }
        })?;
        let meta = db.open_tree("meta")?;
        let index = db.open_tree("chunks")?;
        let mut recovery = RecoveryReport::default();
        let params = match meta.get("params")? {
            Some(p) => {
                let format = meta
                    .get("format")?
                    .and_then(|f| f.as_ref().try_into().ok().map(u32::from_le_bytes));
                if format != Some(STORE_FORMAT) {
                    return Err(Error::BadStore {
                        dir,
                        what: format!(
                            "store format {format:?} is not {STORE_FORMAT}: made by another lbsync version"
                        ),
                    });
                }
                ChunkParams::from_bytes(&p).map_err(|e| Error::BadStore {
                    dir: dir.clone(),
                    what: format!("its recorded chunking parameters are invalid: {e}"),
                })?
            }
            None if opts.read_only || !opts.create => {
                return Err(Error::BadStore {
                    dir,
                    what: "its index records no chunking parameters: it was never opened by \
                           lbsync-server (start the server once to create it)"
                        .into(),
                });
            }
            None => {
                opts.params.validate()?;
                let mut batch = sled::Batch::default();
                batch.insert("format", &STORE_FORMAT.to_le_bytes());
                batch.insert("params", &opts.params.to_bytes());
                batch.insert(STORE_ID_KEY, new_store_id().as_bytes());
                meta.apply_batch(batch)?;
                db.flush()?;
                recovery.created = true;
                opts.params
            }
        };
        let store_id = if opts.read_only {
            read_store_id(&dir, &meta)?.unwrap_or_default()
        } else {
            load_store_id(&dir, &db, &meta)?
        };

        let packs = list_packs(&packs_dir)?;
        let mut unindexed = HashMap::new();
        for &pack in &packs {
            let scan = Scan {
                packs_dir: &packs_dir,
                index: &index,
                pack,
                // Entries go to sled, or stay in memory when the store must not change.
                unindexed: (opts.read_only).then_some(&mut unindexed),
            };
            scan.run(&mut recovery)?;
        }
        let writer = match packs.last() {
            _ if opts.read_only => None,
            Some(&last) => {
                let path = pack_path(&packs_dir, last);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(Error::io(format!("opening pack {}", path.display())))?;
                let len = file_len(&file, &path)?;
                let mut w = Writer {
                    pack: last,
                    file,
                    len,
                    direct: DirectAppender::open(&path),
                };
                if len >= opts.pack_target {
                    w.roll(&packs_dir)?;
                }
                Some(w)
            }
            None => Some(Writer::create(&packs_dir, 1)?),
        };
        if !opts.read_only && (recovery.reindexed > 0 || !recovery.truncated.is_empty()) {
            db.flush()?;
        }
        let present = presence_of(&index, &unindexed)?;
        let indexer = Indexer::start(index.clone()).map_err(Error::io(
            "starting the thread that writes the index".to_owned(),
        ))?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                packs_dir,
                db,
                index,
                present,
                indexer,
                params,
                pack_target: opts.pack_target,
                writer: Mutex::new(writer),
                unindexed,
                read_only: opts.read_only,
                readers: Mutex::new(HashMap::new()),
                recovery,
                store_id,
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The store's identity: 32 lowercase hex digits (16 random bytes) made when the store was
    /// created (or, for a store older than ids, at its first open) and never changed. A store
    /// rebuilt from nothing, or another store at the same address, has another id; a client that
    /// sees the id change knows the server forgot what the client synced.
    ///
    /// Empty only for an old store opened read-only before any writable open gave it an id.
    pub fn store_id(&self) -> &str {
        &self.inner.store_id
    }

    /// What opening the store repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The sled database, for callers that keep their own metadata beside the chunk index (the
    /// server does). The trees `chunks` and `meta` belong to the store: do not touch them.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// Flushes the index to disk. Not needed for durability (see the module docs); it shortens
    /// the scan on the next open.
    pub fn flush(&self) -> Result<()> {
        self.inner.indexer.settle()?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Walks every pack record and index entry and checks every hash; with `repair`, truncates
    /// torn tails and rebuilds the index entries from the packs.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        fsck::run(self, repair)
    }

    /// Whether the store holds `id`: the filter rules most absent ids out, the cache answers for
    /// ids seen lately, the index (and the entries on their way there) for the rest.
    fn is_present(&self, id: &ChunkId) -> Result<bool> {
        let present = &self.inner.present;
        if !present.may_contain(id) {
            return Ok(false);
        }
        if present.cached(id) {
            return Ok(true);
        }
        let found = self.entry(id)?.is_some();
        if found {
            present.remember(id);
        }
        Ok(found)
    }

    fn entry(&self, id: &ChunkId) -> Result<Option<IndexEntry>> {
        // Pending first: the indexer writes an entry to sled before it forgets it.
        if let Some(e) = self.inner.indexer.get(id) {
            return Ok(Some(e));
        }
        Ok(match self.inner.index.get(id.as_bytes())? {
            Some(v) => IndexEntry::decode(&v),
            None => self.inner.unindexed.get(id).copied(),
        })
    }

    /// Every index entry: sled's, then those a read-only open holds in memory.
    fn entries(&self) -> impl Iterator<Item = Result<(ChunkId, IndexEntry)>> + '_ {
        let sled = self.inner.index.iter().filter_map(|kv| match kv {
            Err(e) => Some(Err(Error::from(e))),
            Ok((k, v)) => Some(Ok((chunk_key(&k)?, IndexEntry::decode(&v)?))),
        });
        sled.chain(self.inner.unindexed.iter().map(|(id, e)| Ok((*id, *e))))
    }

    fn read_only_error(&self, what: &'static str) -> Error {
        Error::ReadOnly {
            dir: self.inner.dir.clone(),
            what,
        }
    }

    /// Forgets a chunk whose record is damaged, so that it is reported missing and its next
    /// insert (an upload from any client that still has it) stores a sound copy. Only the entry
    /// that was read is removed: if the chunk was moved or stored again meanwhile, that stays.
    fn forget_damaged(&self, id: &ChunkId, entry: &IndexEntry) -> Result<bool> {
        // No insert or gc in between; and the entry, if still on its way to sled, lands first,
        // so that it cannot come back after the removal.
        let _writer = lock(&self.inner.writer);
        self.inner.indexer.settle()?;
        let removed = self
            .inner
            .index
            .compare_and_swap(id.as_bytes(), Some(&entry.encode()[..]), None::<&[u8]>)?
            .is_ok();
        if removed {
            self.inner.present.remove_all([id]);
            self.inner.db.flush()?;
        }
        Ok(removed)
    }

    fn reader(&self, pack: u32) -> std::io::Result<Arc<File>> {
        if let Some(f) = lock(&self.inner.readers).get(&pack) {
            return Ok(f.clone());
        }
        let file = Arc::new(File::open(pack_path(&self.inner.packs_dir, pack))?);
        let mut readers = lock(&self.inner.readers);
        if readers.len() >= MAX_OPEN_PACKS {
            // Stay well under the file descriptor limit; reopening is cheap.
            readers.clear();
        }
        readers.insert(pack, file.clone());
        Ok(file)
    }

    fn forget_reader(&self, pack: u32) {
        lock(&self.inner.readers).remove(&pack);
    }

    /// The chunk's bytes; on failure, the error and whether the bytes on disk are damaged (read
    /// and found wrong, or gone) rather than unreadable for now (an I/O error).
    fn read_entry(&self, id: &ChunkId, e: &IndexEntry) -> Result<Bytes, (Error, bool)> {
        let corrupt = |what: String, damaged: bool| {
            let err = Error::Corrupt {
                id: *id,
                pack: e.pack,
                offset: e.offset,
                what,
            };
            (err, damaged)
        };
        let file = self.reader(e.pack).map_err(|err| {
            let gone = err.kind() == std::io::ErrorKind::NotFound;
            corrupt(format!("its pack file cannot be opened: {err}"), gone)
        })?;
        let mut buf = vec![0u8; e.record_len() as usize];
        file.read_exact_at(&mut buf, e.offset).map_err(|err| {
            let cut = err.kind() == std::io::ErrorKind::UnexpectedEof;
            corrupt(format!("the record cannot be read: {err}"), cut)
        })?;
        let header = RecordHeader::decode(&buf)
            .ok_or_else(|| corrupt("the record header is damaged".into(), true))?;
        if header.id != *id {
            return Err(corrupt(
                format!("the record there holds chunk {}", header.id),
                true,
            ));
        }
        if header.stored_len != e.stored_len {
            return Err(corrupt(
                "the record's length disagrees with the index".into(),
                true,
            ));
        }
        decode_payload(&header, &buf[RECORD_HEADER_LEN..]).map_err(|what| corrupt(what, true))
    }
}

impl Writer {
    fn create(packs_dir: &Path, pack: u32) -> Result<Writer> {
        let path = pack_path(packs_dir, pack);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::io(format!("creating pack {}", path.display())))?;
        let written = file
            .write_all_at(&pack_header(), 0)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            // Leave no half-made pack behind: the next roll would trip over it.
            let _ = fs::remove_file(&path);
            return Err(Error::io(format!("writing pack {}", path.display()))(e));
        }
        sync_dir(packs_dir)?;
        Ok(Writer {
            pack,
            file,
            len: PACK_HEADER_LEN,
            direct: DirectAppender::open(&path),
        })
    }

    fn roll(&mut self, packs_dir: &Path) -> Result<()> {
        *self = Writer::create(packs_dir, self.pack + 1)?;
        Ok(())
    }

    /// Writes `parts` at the end of the pack and syncs it: a large append past the page cache
    /// ([`direct`]), a small one in one vectored write. On failure the pack is cut back to where
    /// it was, so a later append leaves no damaged record in the middle.
    fn write_synced(&mut self, parts: &mut [IoSlice<'_>], packs_dir: &Path) -> Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return Ok(());
        }
        let res = (|| {
            if total >= DIRECT_MIN
                && let Some(direct) = &mut self.direct
            {
                match direct.append(&self.file, self.len, parts) {
                    Ok(()) => return self.file.sync_data(),
                    // The file system takes the flag but not the writes: stay buffered.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => self.direct = None,
                    Err(e) => return Err(e),
                }
            }
            self.file.seek(SeekFrom::Start(self.len))?;
            let mut parts = &mut parts[..];
            while !parts.is_empty() {
                match self.file.write_vectored(parts) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => IoSlice::advance_slices(&mut parts, n),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.file.sync_data()
        })();
        if let Err(e) = res {
            let _ = self.file.set_len(self.len);
            let path = pack_path(packs_dir, self.pack);
            return Err(Error::io(format!("appending to pack {}", path.display()))(
                e,
            ));
        }
        self.len += total as u64;
        Ok(())
    }

    /// Appends records (header bytes and payload), rolling to a new pack when this one is full,
    /// and returns their index entries and the touched packs' watermarks. Returns after every byte
    /// is synced.
    fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a RecordHeader, [&'a [u8]; 2], u64)>,
        packs_dir: &Path,
        pack_target: u64,
    ) -> Result<Appended> {
        let mut out = Appended::default();
        let mut parts: Vec<IoSlice<'a>> = Vec::new();
        let mut pending = 0u64;
        for (header, [head, payload], inserted_at) in records {
            let end = self.len + pending;
            let len = (head.len() + payload.len()) as u64;
            if end + len > pack_target && end > PACK_HEADER_LEN {
                self.write_synced(&mut parts, packs_dir)?;
                out.watermarks.push((self.pack, self.len));
                parts.clear();
                pending = 0;
                self.roll(packs_dir)?;
            }
            let entry = IndexEntry::of(header, self.pack, self.len + pending, inserted_at);
            out.entries.push((header.id, entry));
            parts.push(IoSlice::new(head));
            parts.push(IoSlice::new(payload));
            pending += len;
        }
        self.write_synced(&mut parts, packs_dir)?;
        out.watermarks.push((self.pack, self.len));
        Ok(out)
    }
}

impl ChunkStore for PackStore {
    fn params(&self) -> ChunkParams {
        self.inner.params
    }

    /// Returns once the new chunks' bytes are `fdatasync`ed (see the module docs for what
    /// survives a crash); their index entries follow. One sync covers the whole batch.
    fn insert_batch(&self, chunks: &[Chunk]) -> Result<Vec<Inserted>> {
        let mut outcome = vec![Inserted::AlreadyPresent; chunks.len()];
        let mut seen = HashSet::with_capacity(chunks.len());
        let mut todo = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            if seen.insert(c.id()) && !self.is_present(&c.id())? {
                todo.push(i);
            }
        }
        if todo.is_empty() {
            return Ok(outcome);
        }
        // Compress outside the lock.
        let records: Vec<(usize, Record)> = todo
            .into_iter()
            .map(|i| (i, Record::encode(&chunks[i])))
            .collect();
        let mut writer = lock(&self.inner.writer);
        let Some(writer) = writer.as_mut() else {
            return Err(self.read_only_error("store chunks"));
        };
        self.inner.indexer.reserve()?;
        // Another thread may have stored some of these while we compressed.
        let mut fresh = Vec::with_capacity(records.len());
        for (i, r) in &records {
            if !self.is_present(&r.header.id)? {
                fresh.push((&r.header, [&r.head[..], &r.payload[..]], unix_now()));
                outcome[*i] = Inserted::New;
            }
        }
        if fresh.is_empty() {
            return Ok(outcome);
        }
        let appended = writer.append(fresh, &self.inner.packs_dir, self.inner.pack_target)?;
        // Readable (pending) before it is said to be present.
        self.inner.indexer.submit(appended);
        self.inner
            .present
            .insert_all(records.iter().map(|(_, r)| &r.header.id));
        Ok(outcome)
    }

    fn get(&self, id: &ChunkId) -> Result<Option<Bytes>> {
        let Some(entry) = self.entry(id)? else {
            return Ok(None);
        };
        let (err, damaged, entry) = match self.read_entry(id, &entry) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err((err, damaged)) => match self.entry(id)? {
                // Garbage collection moved the chunk between our two reads of the index.
                Some(moved) if moved != entry => match self.read_entry(id, &moved) {
                    Ok(bytes) => return Ok(Some(bytes)),
                    Err((err, damaged)) => (err, damaged, moved),
                },
                Some(_) => (err, damaged, entry),
                None => return Ok(None),
            },
        };
        // If forgetting fails (sled failing), the damage is still what to report.
        if !damaged || self.inner.read_only || !matches!(self.forget_damaged(id, &entry), Ok(true))
        {
            return Err(err);
        }
        Err(match err {
            Error::Corrupt {
                id,
                pack,
                offset,
                what,
            } => Error::Corrupt {
                id,
                pack,
                offset,
                what: format!(
                    "{what}; the store forgot it, so it is reported missing and the next upload \
                     of it from a client that has it stores a sound copy"
                ),
            },
            other => other,
        })
    }

    fn contains(&self, id: &ChunkId) -> Result<bool> {
        self.is_present(id)
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let mut seen = HashSet::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            if seen.insert(*id) && !self.is_present(id)? {
                missing.push(*id);
            }
        }
        Ok(missing)
    }

    fn gc(&self, live: &mut dyn Iterator<Item = ManifestId>, opts: &GcOptions) -> Result<GcReport> {
        gc::run(self, live, opts)
    }

    fn stats(&self) -> Result<StoreStats> {
        self.inner.indexer.settle()?;
        let mut s = StoreStats::default();
        for kv in self.entries() {
            let (_, e) = kv?;
            s.chunks += 1;
            s.raw_bytes += u64::from(e.raw_len);
            s.stored_bytes += u64::from(e.stored_len);
        }
        for pack in list_packs(&self.inner.packs_dir)? {
            let path = pack_path(&self.inner.packs_dir, pack);
            s.disk_bytes += fs::metadata(&path)
                .map_err(Error::io(format!("reading size of {}", path.display())))?
                .len();
            s.packs += 1;
        }
        Ok(s)
    }
}

/// The store id in `meta`, if it has one.
fn read_store_id(dir: &Path, meta: &sled::Tree) -> Result<Option<String>> {
    let Some(v) = meta.get(STORE_ID_KEY)? else {
        return Ok(None);
    };
    std::str::from_utf8(&v)
        .ok()
        .filter(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|s| Some(s.to_owned()))
        .ok_or_else(|| Error::BadStore {
            dir: dir.to_path_buf(),
            what: format!(
                "its recorded store id {:?} is not 32 hex digits; restore the index from a \
                 backup, or delete the `store_id` key only if you accept that clients will treat \
                 this as a new store",
                String::from_utf8_lossy(&v)
            ),
        })
}

/// The key of the store id in the `meta` tree.
const STORE_ID_KEY: &str = "store_id";

/// 16 random bytes as 32 lowercase hex digits: from the OS's random source, mixed with the time,
/// the process id and std's per-process random hash keys, so that even without `/dev/urandom` two
/// stores never share an id.
fn new_store_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;
    let mut hasher = blake3::Hasher::new();
    let mut os = [0u8; 32];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut os))
        .is_ok()
    {
        hasher.update(&os);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    let keyed = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.update(&keyed.finish().to_le_bytes());
    let hash = hasher.finalize();
    hash.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The store id in `meta`; a store made before ids gets one now, flushed before it is used.
fn load_store_id(dir: &Path, db: &sled::Db, meta: &sled::Tree) -> Result<String> {
    if let Some(id) = read_store_id(dir, meta)? {
        return Ok(id);
    }
    let id = new_store_id();
    // Two openers racing (sled locks the index, so only in theory) agree on the first.
    if meta
        .compare_and_swap(STORE_ID_KEY, None::<&[u8]>, Some(id.as_bytes()))?
        .is_err()
    {
        return load_store_id(dir, db, meta);
    }
    db.flush()?;
    Ok(id)
}

/// A presence filter of the chunk ids in the index and in `unindexed`, sized for them: two walks
/// of the index's keys (one to count, one to fill), nothing held but the filter.
fn presence_of(index: &sled::Tree, unindexed: &HashMap<ChunkId, IndexEntry>) -> Result<Presence> {
    let present = Presence::build(0, []);
    fill_presence(&present, index, unindexed)?;
    Ok(present)
}

/// Rebuilds `present` from the index (see [`presence_of`]).
fn fill_presence(
    present: &Presence,
    index: &sled::Tree,
    unindexed: &HashMap<ChunkId, IndexEntry>,
) -> Result<()> {
    let mut n = unindexed.len() as u64;
    for key in index.iter().keys() {
        n += u64::from(chunk_key(&key?).is_some());
    }
    let mut failed = None;
    let ids = index
        .iter()
        .keys()
        .map_while(|k| match k {
            Ok(k) => Some(chunk_key(&k)),
            Err(e) => {
                failed = Some(e);
                None
            }
        })
        .flatten()
        .chain(unindexed.keys().copied());
    present.replace(n, ids);
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Opens the sled index. sled releases its file lock a moment after the last handle is dropped
/// (background threads finish their work), so a reopen right after a close waits a little for it.
fn open_index(path: &Path, opts: &StoreOptions) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + opts.lock_wait;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_capacity)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

pub(crate) fn pack_path(packs_dir: &Path, pack: u32) -> PathBuf {
    packs_dir.join(format!("{pack:08}.pack"))
}

/// The pack numbers in `packs_dir`, ascending. Other files are ignored.
pub(crate) fn list_packs(packs_dir: &Path) -> Result<Vec<u32>> {
    let context = || format!("listing packs in {}", packs_dir.display());
    let mut packs = Vec::new();
    for entry in fs::read_dir(packs_dir).map_err(Error::io(context()))? {
        let name = entry.map_err(Error::io(context()))?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".pack")
            .filter(|s| s.len() == 8)
            .and_then(|s| s.parse::<u32>().ok())
        {
            packs.push(n);
        }
    }
    packs.sort_unstable();
    Ok(packs)
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    Ok(file
        .metadata()
        .map_err(Error::io(format!("reading size of {}", path.display())))?
        .len())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!("syncing directory {}", dir.display())))
}

/// The recovery scan of one pack at open.
struct Scan<'a> {
    packs_dir: &'a Path,
    index: &'a sled::Tree,
    pack: u32,
    /// Where a read-only open keeps the entries it finds; `None`: write them (and the
    /// watermark) to the index, and cut a torn tail.
    unindexed: Option<&'a mut HashMap<ChunkId, IndexEntry>>,
}

impl Scan<'_> {
    /// Indexes the records past the pack's watermark. Damaged bytes in the middle (a header that
    /// does not check out, a payload that does not hash to its id) are skipped up to the next
    /// sound record, so no acknowledged record after them is lost; only a torn tail, with no
    /// sound record after it, is cut, and only by a writable open.
    fn run(mut self, report: &mut RecoveryReport) -> Result<()> {
        let (pack, writable) = (self.pack, self.unindexed.is_none());
        let path = pack_path(self.packs_dir, pack);
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .map_err(Error::io(format!("opening pack {}", path.display())))?;
        let len = file_len(&file, &path)?;
        let io_err = || Error::io(format!("recovering pack {}", path.display()));
        if len < PACK_HEADER_LEN {
            // Created but its header never reached the disk: nothing in it was acknowledged.
            if writable {
                file.set_len(0)
                    .and_then(|()| file.write_all_at(&pack_header(), 0))
                    .and_then(|()| file.sync_data())
                    .map_err(io_err())?;
            }
            return Ok(());
        }
        let mut head = [0u8; PACK_HEADER_LEN as usize];
        file.read_exact_at(&mut head, 0).map_err(io_err())?;
        check_pack_header(&head).map_err(|what| Error::BadStore {
            dir: path.clone(),
            what: format!(
                "pack {} {what}; move it out of the packs directory, then run `lbsync-server fsck --repair`",
                path.display()
            ),
        })?;
        let mut offset = self
            .index
            .get(watermark_key(pack))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(PACK_HEADER_LEN)
            .clamp(PACK_HEADER_LEN, len);
        let reader = PackReader { file: &file, len };
        let mut batch = sled::Batch::default();
        let now = unix_now();
        let mut after_skip = false;
        loop {
            match reader.record_at(offset).map_err(io_err())? {
                RecordAt::Valid { header, next } => {
                    if !self.index.contains_key(header.id.as_bytes())? {
                        let entry = IndexEntry::of(&header, pack, offset, now);
                        match &mut self.unindexed {
                            Some(mem) => {
                                mem.entry(header.id).or_insert(entry);
                            }
                            None => batch.insert(header.id.as_bytes(), &entry.encode()),
                        }
                        report.reindexed += 1;
                    }
                    report.salvaged += u64::from(after_skip);
                    offset = next;
                }
                RecordAt::End => break,
                RecordAt::Torn | RecordAt::BadHeader | RecordAt::BadPayload { .. } => {
                    match reader.next_sound_after(offset).map_err(io_err())? {
                        Some(resume) => {
                            report.skipped.push((pack, offset, resume - offset));
                            after_skip = true;
                            offset = resume;
                        }
                        None if writable => {
                            // Nothing sound follows: an append cut off by a crash, never
                            // acknowledged (synced bytes form a prefix).
                            file.set_len(offset)
                                .and_then(|()| file.sync_data())
                                .map_err(io_err())?;
                            report.truncated.push((pack, offset, len - offset));
                            break;
                        }
                        None => {
                            report.torn_left.push((pack, offset, len - offset));
                            break;
                        }
                    }
                }
            }
        }
        if writable {
            batch.insert(&watermark_key(pack), &offset.to_le_bytes());
            self.index.apply_batch(batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
