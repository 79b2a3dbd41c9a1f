//! [`MemStore`]: the chunk store as a map in memory, for tests of the other crates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use crate::chunk::Chunk;
use crate::error::Result;
use crate::id::{ChunkId, ManifestId};
use crate::params::ChunkParams;
use crate::store::{ChunkStore, GcOptions, GcReport, Inserted, StoreStats, mark};

/// A [`ChunkStore`] in a `HashMap`. Clones share the map. Nothing is durable.
#[derive(Clone, Debug)]
pub struct MemStore {
    params: ChunkParams,
    chunks: Arc<Mutex<HashMap<ChunkId, (Bytes, Instant)>>>,
}

impl MemStore {
    /// An empty store with the given chunking parameters.
    pub fn new(params: ChunkParams) -> Self {
        Self {
            params,
            chunks: Arc::default(),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<ChunkId, (Bytes, Instant)>> {
        // A panic while holding the lock cannot leave the map half-updated: every update is one
        // insert or retain call.
        self.chunks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new(ChunkParams::DEFAULT)
    }
}

impl ChunkStore for MemStore {
    fn params(&self) -> ChunkParams {
        self.params
    }

    fn insert_batch(&self, chunks: &[Chunk]) -> Result<Vec<Inserted>> {
        let mut map = self.map();
        let now = Instant::now();
        Ok(chunks
            .iter()
            .map(|c| match map.entry(c.id()) {
                std::collections::hash_map::Entry::Occupied(_) => Inserted::AlreadyPresent,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((c.data().clone(), now));
                    Inserted::New
                }
            })
            .collect())
    }

    fn get(&self, id: &ChunkId) -> Result<Option<Bytes>> {
        Ok(self.map().get(id).map(|(b, _)| b.clone()))
    }

    fn contains(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.map().contains_key(id))
    }

    fn gc(&self, live: &mut dyn Iterator<Item = ManifestId>, opts: &GcOptions) -> Result<GcReport> {
        let marked = mark(self, live)?;
        let mut map = self.map();
        let mut report = GcReport {
            live_chunks: marked.len() as u64,
            ..GcReport::default()
        };
        let now = Instant::now();
        map.retain(|id, (bytes, at)| {
            if marked.contains(id) {
                return true;
            }
            if now.duration_since(*at) < opts.grace {
                report.kept_in_grace += 1;
                return true;
            }
            report.swept_chunks += 1;
            report.swept_bytes += bytes.len() as u64;
            opts.dry_run
        });
        if !opts.dry_run {
            report.bytes_reclaimed = report.swept_bytes;
        }
        Ok(report)
    }

    fn stats(&self) -> Result<StoreStats> {
        let map = self.map();
        let bytes: u64 = map.values().map(|(b, _)| b.len() as u64).sum();
        Ok(StoreStats {
            chunks: map.len() as u64,
            raw_bytes: bytes,
            stored_bytes: bytes,
            disk_bytes: bytes,
            packs: 0,
        })
    }
}
