//! The contract every [`ChunkIndex`] keeps (feature `contract-tests`): the in-memory index runs
//! it here, the server's PostgreSQL index in the server's tests.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // a test suite: a failure panics

use lbsync_chunkstore::ChunkId;

use crate::index::{ChunkIndex, IndexStats, Location, PackName};

fn loc(pack: u8, offset: u64) -> Location {
    Location {
        pack: PackName::from_bytes([pack; 16]),
        offset,
        stored_len: 10,
        raw_len: u32::MAX,
    }
}

/// Runs the [`ChunkIndex`] contract on an empty index, panicking at the first breach: first
/// writer wins (also within one call), removal, sweeping and relocation are conditional on the
/// pack, sweeping also on the insert time, which a touch renews; insert times are kept, and every
/// method takes many ids at once.
pub fn index(index: &dyn ChunkIndex) {
    let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
    index.record(&[], 1).unwrap();
    index
        .record(&[(a, loc(1, 16)), (a, loc(2, 16))], 100)
        .unwrap();
    index
        .record(&[(a, loc(3, 16)), (b, loc(3, 72))], 200)
        .unwrap();
    assert_eq!(
        index.lookup(&[a, b, ChunkId::of(b"c"), a]).unwrap(),
        vec![Some(loc(1, 16)), Some(loc(3, 72)), None, Some(loc(1, 16))]
    );
    let mut seen = Vec::new();
    index
        .scan(&mut |id, l, t| {
            seen.push((id, l, t));
            Ok(())
        })
        .unwrap();
    seen.sort_by_key(|e| e.2);
    assert_eq!(seen, vec![(a, loc(1, 16), 100), (b, loc(3, 72), 200)]);
    assert_eq!(
        index.remove(&[(a, loc(3, 0).pack)]).unwrap(),
        0,
        "a is in pack 1"
    );
    assert_eq!(
        index.relocate(&[(b, loc(1, 0).pack, loc(4, 16))]).unwrap(),
        0
    );
    assert_eq!(
        index.relocate(&[(b, loc(3, 0).pack, loc(4, 16))]).unwrap(),
        1
    );
    assert_eq!(index.lookup(&[b]).unwrap(), vec![Some(loc(4, 16))]);
    assert_eq!(index.remove(&[(a, loc(1, 0).pack)]).unwrap(), 1);
    assert_eq!(
        index.stats().unwrap(),
        IndexStats {
            chunks: 1,
            raw_bytes: u64::from(u32::MAX),
            stored_bytes: 10
        }
    );
    let many: Vec<(ChunkId, Location)> = (0..30_000u64)
        .map(|i| (ChunkId::of(&i.to_le_bytes()), loc(5, i * 100)))
        .collect();
    index.record(&many, 300).unwrap();
    let ids: Vec<ChunkId> = many.iter().map(|(id, _)| *id).collect();
    let found = index.lookup(&ids).unwrap();
    assert!(found.iter().zip(&many).all(|(f, (_, l))| *f == Some(*l)));
    let mut n = 0;
    index
        .scan(&mut |_, _, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 30_001);
    let gone: Vec<(ChunkId, PackName)> = ids.iter().map(|id| (*id, loc(5, 0).pack)).collect();
    assert_eq!(index.remove(&gone).unwrap(), 30_000);

    // Touch and sweep: a touched entry is young again for a collection that read it old.
    let (old, young, moved) = (
        ChunkId::of(b"old"),
        ChunkId::of(b"young"),
        ChunkId::of(b"m"),
    );
    index
        .record(&[(old, loc(6, 16)), (moved, loc(6, 72))], 100)
        .unwrap();
    index.record(&[(young, loc(6, 128))], 900).unwrap();
    // A collection starting at 1000 with a grace of 500 read the three as they were; then a
    // commit touched `old` and `young` (only `old` older than 750), and a repack moved `moved`.
    let read: Vec<(ChunkId, PackName)> =
        [old, young, moved].map(|id| (id, loc(6, 0).pack)).to_vec();
    index.touch(&[], 1000, 750).unwrap();
    index
        .touch(&[old, young, ChunkId::of(b"absent")], 1000, 750)
        .unwrap();
    assert_eq!(
        index
            .relocate(&[(moved, loc(6, 0).pack, loc(7, 16))])
            .unwrap(),
        1
    );
    assert_eq!(index.sweep(&read, 500).unwrap(), Vec::<ChunkId>::new());
    let mut times = std::collections::HashMap::new();
    index
        .scan(&mut |id, _, t| {
            times.insert(id, t);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        (times[&old], times[&young], times[&moved]),
        (1000, 900, 100)
    );
    // A later collection, past the touch, sweeps what is still where it read it.
    let mut swept = index.sweep(&read, 1001).unwrap();
    swept.sort();
    let mut expected = vec![old, young];
    expected.sort();
    assert_eq!(swept, expected);
    assert_eq!(index.lookup(&[moved]).unwrap(), vec![Some(loc(7, 16))]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_in_memory_index_keeps_the_contract() {
        super::index(&crate::MemIndex::new());
    }
}
