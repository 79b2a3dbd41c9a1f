//! The [`ChunkStore`] trait and the types its methods return.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::id::{ChunkId, ManifestId};
use crate::manifest::Manifest;
use crate::params::ChunkParams;

/// What an insert did. A duplicate is not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The chunk was stored.
    New,
    /// The store already held the chunk; nothing was written.
    AlreadyPresent,
}

/// How garbage collection runs.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Chunks inserted less than this long ago are never swept, live or not: they may belong to an
    /// upload whose commit has not arrived yet.
    pub grace: Duration,
    /// Packs whose live fraction (live bytes / bytes) falls below this are rewritten.
    pub repack_below: f64,
    /// Report what would be done without changing anything.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            repack_below: 0.5,
            dry_run: false,
        }
    }
}

/// What garbage collection found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks (and manifests) reachable from the live manifests.
    pub live_chunks: u64,
    /// Unreachable chunks removed from the index (or that would be, on a dry run).
    pub swept_chunks: u64,
    /// Their uncompressed bytes.
    pub swept_bytes: u64,
    /// Unreachable chunks kept because they are younger than the grace period.
    pub kept_in_grace: u64,
    /// Packs whose live chunks were copied out before the pack was deleted.
    pub packs_rewritten: u64,
    /// Packs deleted (rewritten ones included).
    pub packs_deleted: u64,
    /// Disk space given back.
    pub bytes_reclaimed: u64,
}

/// Sizes of what a store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Distinct chunks (manifests included, which are stored as chunks).
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub raw_bytes: u64,
    /// Their bytes as stored (after compression, before record headers).
    pub stored_bytes: u64,
    /// Bytes the store occupies on disk (pack files; the whole map for the memory store).
    pub disk_bytes: u64,
    /// Pack files.
    pub packs: u64,
}

impl StoreStats {
    /// Logical bytes (the sizes of all the files that reference the store) per byte on disk.
    pub fn dedup_ratio(&self, logical_bytes: u64) -> f64 {
        if self.disk_bytes == 0 {
            return 1.0;
        }
        logical_bytes as f64 / self.disk_bytes as f64
    }
}

/// A content-addressed store of chunks. Synchronous; handles are cheap to share between threads.
///
/// Implementations: [`crate::PackStore`] (pack files + sled index, durable) and
/// [`crate::MemStore`] (a map, for tests).
pub trait ChunkStore: Send + Sync {
    /// The chunking parameters recorded for this store; every client must chunk with them.
    fn params(&self) -> ChunkParams;

    /// Stores the chunks not yet present. The result has one entry per input chunk, in order.
    /// Durability is the implementation's to document; [`crate::PackStore`] returns only once the
    /// bytes are on disk.
    fn insert_batch(&self, chunks: &[Chunk]) -> Result<Vec<Inserted>>;

    /// Stores one chunk.
    fn insert(&self, chunk: &Chunk) -> Result<Inserted> {
        let outcome = self.insert_batch(std::slice::from_ref(chunk))?;
        Ok(outcome[0])
    }

    /// A chunk's bytes, checked against its id; `Ok(None)` if the store does not hold it, and
    /// [`Error::Corrupt`] (never wrong bytes) if what is stored no longer hashes to the id.
    fn get(&self, id: &ChunkId) -> Result<Option<Bytes>>;

    /// The chunks' bytes, one entry per id in order (`None` where the store does not hold it),
    /// each checked as [`ChunkStore::get`] checks it. The default asks `get` for each in turn; a
    /// store behind a network overrides it to fetch many at once.
    fn get_batch(&self, ids: &[ChunkId]) -> Result<Vec<Option<Bytes>>> {
        ids.iter().map(|id| self.get(id)).collect()
    }

    /// Whether the store holds the chunk.
    fn contains(&self, id: &ChunkId) -> Result<bool>;

    /// The ids of `ids` that the store lacks, in first-seen order, each once.
    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let mut seen = HashSet::with_capacity(ids.len());
        let mut out = Vec::new();
        for id in ids {
            if seen.insert(*id) && !self.contains(id)? {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// [`ChunkStore::missing`] for the chunks a commit is about to reference: the ones the store
    /// holds are also kept from a collection that is running now, however old they are, so that
    /// the commit never lands naming a chunk the collection then sweeps. Only a store whose
    /// collection runs while commits land needs more than `missing` (the default); the object
    /// store refreshes the chunks' index time.
    fn missing_and_keep(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        self.missing(ids)
    }

    /// Stores a manifest (as a chunk holding its encoding) and returns its id.
    fn put_manifest(&self, manifest: &Manifest) -> Result<ManifestId> {
        let chunk = Chunk::new(manifest.encode());
        self.insert(&chunk)?;
        Ok(ManifestId::from_bytes(*chunk.id().as_bytes()))
    }

    /// A stored manifest, decoded.
    fn get_manifest(&self, id: &ManifestId) -> Result<Option<Manifest>> {
        self.get(&id.as_chunk_id())?
            .map(|bytes| Manifest::decode(&bytes))
            .transpose()
    }

    /// Mark and sweep: everything not reachable from `live` (the manifests themselves and their
    /// chunks) and older than the grace period is removed. A live manifest the store lacks stops
    /// the collection before anything is deleted.
    fn gc(&self, live: &mut dyn Iterator<Item = ManifestId>, opts: &GcOptions) -> Result<GcReport>;

    /// Counts and sizes.
    fn stats(&self) -> Result<StoreStats>;
}

/// The mark phase shared by the stores: every manifest in `live` and every chunk it references.
pub(crate) fn mark(
    store: &(impl ChunkStore + ?Sized),
    live: &mut dyn Iterator<Item = ManifestId>,
) -> Result<HashSet<ChunkId>> {
    let mut marked = HashSet::new();
    for mid in live {
        if !marked.insert(mid.as_chunk_id()) {
            continue;
        }
        let manifest = store
            .get_manifest(&mid)?
            .ok_or(Error::MissingManifest(mid))?;
        marked.extend(manifest.chunks().iter().map(|c| c.id));
    }
    Ok(marked)
}
