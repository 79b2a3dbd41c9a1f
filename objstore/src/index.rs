//! The chunk index: which pack object holds each chunk, and where in it.
//!
//! It is a trait because several servers share one index: [`MemIndex`] keeps it in this process
//! (tests, and a single server whose index may be rebuilt from the packs), the server's
//! PostgreSQL implementation keeps it in a table every server reads and writes.
//!
//! # Rules an implementation keeps
//! - Every method is **batched**: one call is one round trip to a database, whatever the number
//!   of ids. Calls are synchronous; the object store calls them from blocking threads.
//! - [`ChunkIndex::record`] is **idempotent, first writer wins**: an id already present keeps its
//!   location and insert time. Two servers that stored the same chunk at once each wrote their
//!   own pack; the first record wins and the other copy is garbage for gc.
//! - [`ChunkIndex::remove`] and [`ChunkIndex::relocate`] are **conditional** on the pack the
//!   entry points into, so that a collection acting on what it read earlier never removes or
//!   moves an entry that changed since (for example one that a repack or a re-insert put in
//!   another pack).
//! - Entries keep their insert time (`inserted_ms`, Unix milliseconds, from the caller's clock):
//!   garbage collection never sweeps an entry younger than its grace period. A server about to
//!   reference a chunk in a commit [`ChunkIndex::touch`]es it, which sets that time to now, and
//!   [`ChunkIndex::sweep`] is conditional on the time too: a collection that decided from an
//!   older read that an entry is garbage never removes it once it has been touched.
//!
//! An implementation must be safe to call from many threads at once, and should pass
//! [`crate::contract::index`] (feature `contract-tests`).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use lbsync_chunkstore::ChunkId;
use lbsync_chunkstore::pack::RECORD_HEADER_LEN;

use crate::error::{Error, Result};

/// A pack object's name: 16 random bytes, written as 32 lowercase hex digits. The object is at
/// `PREFIX/packs/<first 2 hex digits>/<32 hex digits>.pack`. Names are random (never derived from
/// the content), so no two PUTs ever target one object and no conditional PUT is ever needed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackName([u8; 16]);

impl PackName {
    /// The name made of these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The name's 16 bytes (how a database may store it).
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A new random name, from the operating system's random source.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| Error::Random(e.to_string()))?;
        Ok(Self(b))
    }
}

impl fmt::Display for PackName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PackName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackName({self})")
    }
}

impl FromStr for PackName {
    type Err = Error;

    /// Parses 32 hex digits (either case).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadPackName(s.to_owned());
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut b = [0u8; 16];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(b))
    }
}

/// Where a chunk's record is: its pack, the record's offset in it, and the lengths a reader needs
/// to fetch and decode it with one ranged GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The pack object holding the record.
    pub pack: PackName,
    /// The offset of the record (its 56-byte header) in the pack object.
    pub offset: u64,
    /// The payload's length as stored (compressed or raw).
    pub stored_len: u32,
    /// The chunk's length.
    pub raw_len: u32,
}

impl Location {
    /// The record's length, header and payload: what a reader fetches.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.stored_len)
    }

    /// The byte range of the record in its pack object.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + self.record_len()
    }
}

/// Counts and sizes of what the index holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Entries.
    pub chunks: u64,
    /// The sum of their `raw_len`.
    pub raw_bytes: u64,
    /// The sum of their `stored_len`.
    pub stored_bytes: u64,
}

/// The chunk index shared by every server of one object store. See the module docs for the
/// rules an implementation keeps.
pub trait ChunkIndex: Send + Sync {
    /// The location of each id, in order (`None` where the index holds none). One round trip.
    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>>;

    /// Records entries inserted at `now_ms` (Unix milliseconds). Idempotent, first writer wins:
    /// an id already present keeps its location and insert time, and an id given twice in
    /// `entries` gets the first. Called only once the packs the entries point into are stored.
    fn record(&self, entries: &[(ChunkId, Location)], now_ms: i64) -> Result<()>;

    /// Removes each entry that still points into the given pack; an entry that points elsewhere
    /// (stored again, or moved, since the caller read it) stays. Returns how many were removed.
    fn remove(&self, entries: &[(ChunkId, PackName)]) -> Result<u64>;

    /// Sets the insert time of each entry of `ids` that is older than `older_than_ms` to `now_ms`
    /// (ids the index lacks are passed over). One round trip. The server calls it for the chunks
    /// and manifests a commit references, before it checks that they are present.
    fn touch(&self, ids: &[ChunkId], now_ms: i64, older_than_ms: i64) -> Result<()>;

    /// Garbage collection's removal: removes each entry that still points into the given pack
    /// and whose insert time is still before `inserted_before_ms` (so neither stored again
    /// elsewhere nor touched since the caller read it). Returns the ids removed.
    fn sweep(
        &self,
        entries: &[(ChunkId, PackName)],
        inserted_before_ms: i64,
    ) -> Result<Vec<ChunkId>>;

    /// Points each entry that still lies in pack `from` at `to`, keeping its insert time; an
    /// entry that is gone or points elsewhere is left alone. Returns how many moved. Garbage
    /// collection calls it after it copied the records into a new pack.
    fn relocate(&self, moves: &[(ChunkId, PackName, Location)]) -> Result<u64>;

    /// Calls `f` with every entry and its insert time, in no particular order. Entries recorded
    /// or removed while the scan runs may or may not be seen. An error from `f` stops the scan
    /// and is returned.
    fn scan(&self, f: &mut dyn FnMut(ChunkId, Location, i64) -> Result<()>) -> Result<()>;

    /// Counts and sizes of the entries.
    fn stats(&self) -> Result<IndexStats>;
}

/// A [`ChunkIndex`] in a `HashMap` behind a mutex: for tests, and for a single server, which can
/// rebuild it from the packs ([`crate::ObjectChunkStore::rebuild_index`]). Nothing is durable.
#[derive(Debug, Default)]
pub struct MemIndex {
    map: Mutex<HashMap<ChunkId, (Location, i64)>>,
}

impl MemIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<ChunkId, (Location, i64)>> {
        // Every update is a single insert, remove or assignment: a panic elsewhere cannot leave
        // the map half-changed.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChunkIndex for MemIndex {
    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>> {
        let map = self.map();
        Ok(ids.iter().map(|id| map.get(id).map(|(l, _)| *l)).collect())
    }

    fn record(&self, entries: &[(ChunkId, Location)], now_ms: i64) -> Result<()> {
        let mut map = self.map();
        for (id, loc) in entries {
            map.entry(*id).or_insert((*loc, now_ms));
        }
        Ok(())
    }

    fn remove(&self, entries: &[(ChunkId, PackName)]) -> Result<u64> {
        let mut map = self.map();
        let mut n = 0;
        for (id, pack) in entries {
            if map.get(id).is_some_and(|(l, _)| l.pack == *pack) {
                map.remove(id);
                n += 1;
            }
        }
        Ok(n)
    }

    fn touch(&self, ids: &[ChunkId], now_ms: i64, older_than_ms: i64) -> Result<()> {
        let mut map = self.map();
        for id in ids {
            if let Some((_, t)) = map.get_mut(id)
                && *t < older_than_ms
            {
                *t = now_ms;
            }
        }
        Ok(())
    }

    fn sweep(
        &self,
        entries: &[(ChunkId, PackName)],
        inserted_before_ms: i64,
    ) -> Result<Vec<ChunkId>> {
        let mut map = self.map();
        let mut removed = Vec::new();
        for (id, pack) in entries {
            if map
                .get(id)
                .is_some_and(|(l, t)| l.pack == *pack && *t < inserted_before_ms)
            {
                map.remove(id);
                removed.push(*id);
            }
        }
        Ok(removed)
    }

    fn relocate(&self, moves: &[(ChunkId, PackName, Location)]) -> Result<u64> {
        let mut map = self.map();
        let mut n = 0;
        for (id, from, to) in moves {
            if let Some((l, _)) = map.get_mut(id)
                && l.pack == *from
            {
                *l = *to;
                n += 1;
            }
        }
        Ok(n)
    }

    fn scan(&self, f: &mut dyn FnMut(ChunkId, Location, i64) -> Result<()>) -> Result<()> {
        // A copy, so that `f` may call back into the index.
        let entries: Vec<(ChunkId, Location, i64)> = self
            .map()
            .iter()
            .map(|(id, (l, t))| (*id, *l, *t))
            .collect();
        for (id, l, t) in entries {
            f(id, l, t)?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<IndexStats> {
        let map = self.map();
        let mut s = IndexStats::default();
        for (l, _) in map.values() {
            s.chunks += 1;
            s.raw_bytes += u64::from(l.raw_len);
            s.stored_bytes += u64::from(l.stored_len);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_names_print_and_parse_as_hex() {
        let name = PackName::from_bytes([0xab; 16]);
        assert_eq!(name.to_string(), "ab".repeat(16));
        assert_eq!(name.to_string().parse::<PackName>().unwrap(), name);
        assert_eq!("AB".repeat(16).parse::<PackName>().unwrap(), name);
        for bad in ["", "ab", &"zz".repeat(16), &"é".repeat(16)] {
            assert!(bad.parse::<PackName>().is_err(), "{bad}");
        }
        assert_ne!(PackName::random().unwrap(), PackName::random().unwrap());
    }
}
