//! A bounded cache of chunks read, weighed by their bytes, so that a hot chunk (a manifest read
//! by every client of a folder, a chunk many files share) is fetched from the object store once.
//!
//! Only bytes that were checked against their id enter it, so a hit needs no check. The cache is
//! quick_cache's (S3-FIFO eviction, sharded locks).

use bytes::Bytes;
use lbsync_chunkstore::ChunkId;

#[derive(Clone, Copy)]
struct ByLen;

impl quick_cache::Weighter<ChunkId, Bytes> for ByLen {
    fn weight(&self, _id: &ChunkId, bytes: &Bytes) -> u64 {
        // The id and the map's own bookkeeping, roughly, so empty chunks weigh something too.
        bytes.len() as u64 + 64
    }
}

/// Chunks recently read, at most `capacity` bytes of them.
pub(crate) struct ChunkCache {
    cache: Option<quick_cache::sync::Cache<ChunkId, Bytes, ByLen>>,
}

impl ChunkCache {
    /// A cache holding up to `capacity` bytes; 0 turns it off.
    pub(crate) fn new(capacity: u64) -> Self {
        let cache = (capacity > 0).then(|| {
            // quick_cache sizes its tables by the expected number of items: assume ~16 KiB chunks.
            let items = (capacity / (16 << 10)).clamp(16, 1 << 20) as usize;
            quick_cache::sync::Cache::with_weighter(items, capacity, ByLen)
        });
        Self { cache }
    }

    pub(crate) fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.cache.as_ref()?.get(id)
    }

    /// Keeps checked bytes. A chunk larger than an eighth of the cache is not kept: it would push
    /// out many hot small ones.
    pub(crate) fn insert(&self, id: ChunkId, bytes: Bytes) {
        if let Some(c) = &self.cache
            && (bytes.len() as u64) <= c.capacity() / 8
        {
            c.insert(id, bytes);
        }
    }

    pub(crate) fn remove(&self, id: &ChunkId) {
        if let Some(c) = &self.cache {
            c.remove(id);
        }
    }

    /// Bytes held (weights), for tests.
    #[cfg(test)]
    pub(crate) fn weight(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let cache = ChunkCache::new(1 << 20);
        for n in 0u32..1000 {
            let bytes = Bytes::from(vec![n as u8; 10_000]);
            cache.insert(ChunkId::of(&n.to_le_bytes()), bytes);
        }
        assert!(cache.weight() <= 1 << 20, "{}", cache.weight());
        let last = ChunkId::of(&999u32.to_le_bytes());
        assert_eq!(cache.get(&last).map(|b| b.len()), Some(10_000));
        let big = ChunkId::of(b"big");
        cache.insert(big, Bytes::from(vec![0; 200_000]));
        assert_eq!(
            cache.get(&big),
            None,
            "over an eighth of the cache: not kept"
        );
        cache.remove(&last);
        assert_eq!(cache.get(&last), None);
        let off = ChunkCache::new(0);
        off.insert(last, Bytes::from_static(b"x"));
        assert_eq!(off.get(&last), None);
    }
}
