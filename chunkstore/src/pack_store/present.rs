//! Which ids the index holds, in memory that does not grow with the index: a Bloom filter that
//! answers "surely absent" for most new chunks without a sled lookup, and a bounded cache of ids
//! recently found or stored, in front of the index itself (`PackStore::is_present`), which has
//! the last word. sled answers ~0.4–0.6 M lookups/s on this machine; the filter tens of millions.
//!
//! The filter has no false negatives: every id inserted into the store goes into it before the
//! insert returns, and it is only ever rebuilt from the index (plus what is on its way there) under
//! the writer lock. A false positive (about 1% of absent ids) costs one index lookup. Removal (gc,
//! a damaged chunk forgotten) only drops the id from the cache and the index: the filter keeps
//! its bits, which costs a lookup, never a wrong answer.
//!
//! Memory: about 10 bits a chunk, rounded up to a power of two (at most 2.5 bytes a chunk: 25 MB at
//! 10 M chunks), sized at open for twice the chunks the index holds; when the chunks inserted
//! since reach that, a layer twice as large is added. The cache holds at most
//! 2 × [`CACHE_IDS`] ids (about 9 MB).

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::id::ChunkId;

/// Ids per generation of the cache: when one fills, it becomes the old one, and the old one goes.
pub(crate) const CACHE_IDS: usize = 1 << 18;

/// The smallest filter made, in ids.
const MIN_CAPACITY: u64 = 1 << 20;

/// Bits of filter per id it is sized for: a false positive rate of ~0.8% (6 bits set an id).
const BITS_PER_ID: u64 = 10;

/// Ids are uniformly random already: their bits are their hash.
#[derive(Default)]
pub(crate) struct IdBitsHasher(u64);

impl Hasher for IdBitsHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type IdSet = HashSet<u128, BuildHasherDefault<IdBitsHasher>>;

fn key(id: &ChunkId) -> u128 {
    u128::from_le_bytes(id.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// One Bloom filter of a fixed size.
struct Bloom {
    bits: Vec<AtomicU64>,
    /// Bits in the filter minus one (a power of two minus one).
    mask: u64,
    /// Bits set an id.
    hashes: u64,
    /// Ids it was sized for.
    capacity: u64,
    /// Ids inserted.
    count: AtomicU64,
}

impl Bloom {
    fn new(capacity: u64, bits_per_id: u64) -> Self {
        let nbits = (capacity * bits_per_id).next_power_of_two().max(64);
        Self {
            bits: (0..nbits / 64).map(|_| AtomicU64::new(0)).collect(),
            mask: nbits - 1,
            // ln 2 bits an id: the fewest false positives for the size.
            hashes: (bits_per_id * 69 / 100).max(1),
            capacity,
            count: AtomicU64::new(0),
        }
    }

    /// The bits of `id` (double hashing over two words of the id, mixed with this process's salt
    /// so that nobody can choose ids that share bits).
    fn positions(&self, id: &ChunkId, salt: u64) -> impl Iterator<Item = u64> + use<> {
        let b = id.as_bytes();
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let h1 = (word(16) ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let h2 = word(24) | 1;
        let mask = self.mask;
        (0..self.hashes).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & mask)
    }

    /// Sets `id`'s bits; whether any was clear (the id surely new to this layer).
    fn insert(&self, id: &ChunkId, salt: u64) -> bool {
        let mut new = false;
        for p in self.positions(id, salt) {
            let bit = 1 << (p % 64);
            new |= self.bits[(p / 64) as usize].fetch_or(bit, Ordering::Relaxed) & bit == 0;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        new
    }

    fn may_contain(&self, id: &ChunkId, salt: u64) -> bool {
        self.positions(id, salt)
            .all(|p| self.bits[(p / 64) as usize].load(Ordering::Relaxed) & (1 << (p % 64)) != 0)
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

/// A Bloom filter that grows: when its newest layer has taken the ids it was sized for, a layer
/// twice as large takes the next ones. An id is in it if it is in any layer: no false negatives,
/// and false positives at about the sum of the layers' rates.
pub(crate) struct Filter {
    layers: Vec<Bloom>,
    bits_per_id: u64,
    salt: u64,
}

impl Filter {
    /// A filter sized for `capacity` ids, at `bits_per_id` bits each (10: ~0.8% false positives;
    /// 16: ~0.05%).
    pub(crate) fn new(capacity: u64, bits_per_id: u64) -> Self {
        let salt = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            layers: vec![Bloom::new(capacity.max(1), bits_per_id)],
            bits_per_id,
            salt,
        }
    }

    /// False only if `id` was never inserted.
    pub(crate) fn may_contain(&self, id: &ChunkId) -> bool {
        self.layers.iter().any(|l| l.may_contain(id, self.salt))
    }

    /// Inserts `id` (through a shared reference: the bits are atomic); whether it was surely not
    /// in the filter before. Call [`Filter::grow`] when [`Filter::full`] says so.
    pub(crate) fn insert(&self, id: &ChunkId) -> bool {
        let top = self.layers.last().expect("a filter has a layer");
        top.insert(id, self.salt)
    }

    /// Whether the newest layer has taken the ids it was sized for.
    pub(crate) fn full(&self) -> bool {
        let top = self.layers.last().expect("a filter has a layer");
        top.count.load(Ordering::Relaxed) >= top.capacity
    }

    /// Adds a layer twice as large as the newest, if that one is full.
    pub(crate) fn grow(&mut self) {
        if self.full() {
            let capacity = self.layers.last().map_or(1, |l| l.capacity) * 2;
            self.layers.push(Bloom::new(capacity, self.bits_per_id));
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.layers.iter().map(Bloom::bytes).sum()
    }
}

/// Two generations of recently seen ids.
#[derive(Default)]
struct Cache {
    young: IdSet,
    old: IdSet,
}

/// The filter and the cache; see the module docs.
pub(crate) struct Presence {
    filter: RwLock<Filter>,
    cache: Mutex<Cache>,
}

impl Presence {
    /// A filter sized for `expected` ids (twice that, and at least a million), holding `ids`.
    pub(crate) fn build(expected: u64, ids: impl IntoIterator<Item = ChunkId>) -> Self {
        let filter = Filter::new(expected.saturating_mul(2).max(MIN_CAPACITY), BITS_PER_ID);
        for id in ids {
            filter.insert(&id);
        }
        Self {
            filter: RwLock::new(filter),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// False only if `id` was never inserted since the last [`Presence::replace`].
    pub(crate) fn may_contain(&self, id: &ChunkId) -> bool {
        self.read().may_contain(id)
    }

    /// Whether `id` was recently found present (and not removed since).
    pub(crate) fn cached(&self, id: &ChunkId) -> bool {
        let k = key(id);
        let c = self.lock_cache();
        c.young.contains(&k) || c.old.contains(&k)
    }

    /// Notes that `id` was found in the index.
    pub(crate) fn remember(&self, id: &ChunkId) {
        self.remember_all([id]);
    }

    fn remember_all<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId>) {
        let mut c = self.lock_cache();
        for id in ids {
            if c.young.len() >= CACHE_IDS {
                c.old = std::mem::take(&mut c.young);
            }
            c.young.insert(key(id));
        }
    }

    /// Adds ids just stored (before their insert returns).
    pub(crate) fn insert_all<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId> + Clone) {
        let full = {
            let filter = self.read();
            for id in ids.clone() {
                filter.insert(id);
            }
            filter.full()
        };
        if full {
            // Later ids go to a layer twice as large.
            self.filter
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .grow();
        }
        self.remember_all(ids);
    }

    /// Forgets ids removed from the index (the filter keeps their bits: see the module docs).
    pub(crate) fn remove_all<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId>) {
        let mut c = self.lock_cache();
        for id in ids {
            let k = key(id);
            c.young.remove(&k);
            c.old.remove(&k);
        }
    }

    /// Starts afresh from the ids the index holds (after a repair rewrote it).
    pub(crate) fn replace(&self, expected: u64, ids: impl IntoIterator<Item = ChunkId>) {
        let fresh = Self::build(expected, ids);
        *self.filter.write().unwrap_or_else(|p| p.into_inner()) =
            fresh.filter.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.lock_cache() = Cache::default();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Filter> {
        self.filter.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held by the filter, and ids in the cache.
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> (usize, usize) {
        let bytes = self.read().bytes();
        let c = self.lock_cache();
        (bytes, c.young.len() + c.old.len())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Every critical section leaves the cache consistent before anything that can panic.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    /// No false negatives, through growth past the first layer; few false positives; memory
    /// as sized.
    #[test]
    fn the_filter_never_forgets_and_rarely_lies() {
        let p = Presence::build(1000, (0..1000).map(id));
        let more = MIN_CAPACITY * 3;
        let batch: Vec<ChunkId> = (1000..1000 + more).map(id).collect();
        for b in batch.chunks(4096) {
            p.insert_all(b.iter());
        }
        assert!((0..1000 + more).all(|i| p.may_contain(&id(i))));
        let absent = 200_000u64;
        let lies = (0..absent)
            .filter(|i| p.may_contain(&id(u64::MAX - i)))
            .count() as u64;
        // Two or three layers of ~0.8% each.
        assert!(lies < absent * 4 / 100, "{lies} false positives");
        let (bytes, cached) = p.footprint();
        // Layers for 1, 2 and 4 M ids, each at most twice its 10 bits an id.
        assert!(
            bytes as u64 <= 7 * MIN_CAPACITY * BITS_PER_ID * 2 / 8,
            "{bytes}"
        );
        assert!(cached <= 2 * CACHE_IDS);
        p.remove_all(batch.iter().take(10));
        assert!(!p.cached(&batch[0]));
        assert!(p.cached(batch.last().unwrap()));
        p.replace(1, [id(1)]);
        assert!(p.may_contain(&id(1)));
        assert!(!p.cached(batch.last().unwrap()));
    }
}
