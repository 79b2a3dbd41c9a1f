//! The object store's shared chunk index ([`ChunkIndex`]) in PostgreSQL: table `chunks (id PK,
//! pack, pack_offset, stored_len, raw_len, inserted_ms)`. Every method is one statement (one
//! round trip, the ids as arrays); `record` is first writer wins (`ON CONFLICT DO NOTHING`),
//! `remove`, `sweep` and `relocate` only change entries still in the pack the caller names, and
//! `sweep` only those still older than its cutoff (`touch` makes them young again).

use std::collections::HashSet;

use lbsync_chunkstore::ChunkId;
use lbsync_objstore::{ChunkIndex, IndexStats, Location, PackName};

use super::Db;

type Result<T> = lbsync_objstore::Result<T>;

/// Entries one page of [`ChunkIndex::scan`] reads.
const SCAN_PAGE: i64 = 10_000;

/// The chunk index of an object store, in a PostgreSQL database.
pub struct PgChunkIndex {
    db: Db,
}

fn index_err(e: crate::Error) -> lbsync_objstore::Error {
    lbsync_objstore::Error::index(e.to_string())
}

/// An `id = ANY` list: the ids' bytes.
fn id_bytes<'a>(ids: impl Iterator<Item = &'a ChunkId>) -> Vec<&'a [u8]> {
    ids.map(|id| id.as_bytes().as_slice()).collect()
}

/// A row's location (columns pack, pack_offset, stored_len, raw_len from `at`).
fn location(r: &postgres::Row, at: usize) -> Result<Location> {
    let pack: &[u8] = r.get(at);
    let pack = <[u8; 16]>::try_from(pack).map_err(|_| {
        lbsync_objstore::Error::index("a chunk index entry without a sound pack name")
    })?;
    let int = |i: usize| r.get::<_, i64>(at + i);
    Ok(Location {
        pack: PackName::from_bytes(pack),
        offset: int(1) as u64,
        stored_len: int(2) as u32,
        raw_len: int(3) as u32,
    })
}

impl PgChunkIndex {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
    }

    fn conn(&self) -> Result<super::Conn> {
        self.db.conn().map_err(index_err)
    }

    fn fail(&self, what: &str) -> impl Fn(postgres::Error) -> lbsync_objstore::Error {
        let fail = self.db.fail(what);
        move |e| index_err(fail(e))
    }
}

impl ChunkIndex for PgChunkIndex {
    fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>> {
        let rows = self
            .conn()?
            .query(
                "SELECT id, pack, pack_offset, stored_len, raw_len FROM chunks WHERE id = ANY($1)",
                &[&id_bytes(ids.iter())],
            )
            .map_err(self.fail("looking chunks up"))?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            if let Some(id) = ChunkId::from_slice(r.get(0)) {
                found.insert(id, location(r, 1)?);
            }
        }
        Ok(ids.iter().map(|id| found.get(id).copied()).collect())
    }

    fn record(&self, entries: &[(ChunkId, Location)], now_ms: i64) -> Result<()> {
        // An id given twice gets its first location (ON CONFLICT cannot see a row of its own
        // statement).
        let mut seen = HashSet::new();
        let first: Vec<&(ChunkId, Location)> =
            entries.iter().filter(|(id, _)| seen.insert(*id)).collect();
        if first.is_empty() {
            return Ok(());
        }
        let ids = id_bytes(first.iter().map(|(id, _)| id));
        let packs: Vec<&[u8]> = first
            .iter()
            .map(|(_, l)| l.pack.as_bytes().as_slice())
            .collect();
        let offsets: Vec<i64> = first.iter().map(|(_, l)| l.offset as i64).collect();
        let stored: Vec<i64> = first.iter().map(|(_, l)| i64::from(l.stored_len)).collect();
        let raw: Vec<i64> = first.iter().map(|(_, l)| i64::from(l.raw_len)).collect();
        self.conn()?
            .execute(
                "INSERT INTO chunks (id, pack, pack_offset, stored_len, raw_len, inserted_ms) \
                 SELECT *, $6 FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[], $4::int8[], \
                 $5::int8[]) ON CONFLICT (id) DO NOTHING",
                &[&ids, &packs, &offsets, &stored, &raw, &now_ms],
            )
            .map_err(self.fail("recording chunks"))?;
        Ok(())
    }

    fn remove(&self, entries: &[(ChunkId, PackName)]) -> Result<u64> {
        let ids = id_bytes(entries.iter().map(|(id, _)| id));
        let packs: Vec<&[u8]> = entries
            .iter()
            .map(|(_, p)| p.as_bytes().as_slice())
            .collect();
        self.conn()?
            .execute(
                "DELETE FROM chunks c USING UNNEST($1::bytea[], $2::bytea[]) AS u(id, pack) \
                 WHERE c.id = u.id AND c.pack = u.pack",
                &[&ids, &packs],
            )
            .map_err(self.fail("removing chunks"))
    }

    fn touch(&self, ids: &[ChunkId], now_ms: i64, older_than_ms: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.conn()?
            .execute(
                "UPDATE chunks SET inserted_ms = $2 WHERE id = ANY($1) AND inserted_ms < $3",
                &[&id_bytes(ids.iter()), &now_ms, &older_than_ms],
            )
            .map_err(self.fail("touching chunks"))?;
        Ok(())
    }

    fn sweep(
        &self,
        entries: &[(ChunkId, PackName)],
        inserted_before_ms: i64,
    ) -> Result<Vec<ChunkId>> {
        let ids = id_bytes(entries.iter().map(|(id, _)| id));
        let packs: Vec<&[u8]> = entries
            .iter()
            .map(|(_, p)| p.as_bytes().as_slice())
            .collect();
        let rows = self
            .conn()?
            .query(
                "DELETE FROM chunks c USING UNNEST($1::bytea[], $2::bytea[]) AS u(id, pack) \
                 WHERE c.id = u.id AND c.pack = u.pack AND c.inserted_ms < $3 RETURNING c.id",
                &[&ids, &packs, &inserted_before_ms],
            )
            .map_err(self.fail("sweeping chunks"))?;
        Ok(rows
            .iter()
            .filter_map(|r| ChunkId::from_slice(r.get(0)))
            .collect())
    }

    fn relocate(&self, moves: &[(ChunkId, PackName, Location)]) -> Result<u64> {
        let mut seen = HashSet::new();
        let first: Vec<_> = moves.iter().filter(|(id, _, _)| seen.insert(*id)).collect();
        let ids = id_bytes(first.iter().map(|(id, _, _)| id));
        let from: Vec<&[u8]> = first
            .iter()
            .map(|(_, p, _)| p.as_bytes().as_slice())
            .collect();
        let to: Vec<&[u8]> = first
            .iter()
            .map(|(_, _, l)| l.pack.as_bytes().as_slice())
            .collect();
        let offsets: Vec<i64> = first.iter().map(|(_, _, l)| l.offset as i64).collect();
        let stored: Vec<i64> = first
            .iter()
            .map(|(_, _, l)| i64::from(l.stored_len))
            .collect();
        let raw: Vec<i64> = first.iter().map(|(_, _, l)| i64::from(l.raw_len)).collect();
        self.conn()?
            .execute(
                "UPDATE chunks c SET pack = u.to_pack, pack_offset = u.pack_offset, \
                 stored_len = u.stored_len, raw_len = u.raw_len \
                 FROM UNNEST($1::bytea[], $2::bytea[], $3::bytea[], $4::int8[], $5::int8[], \
                 $6::int8[]) AS u(id, from_pack, to_pack, pack_offset, stored_len, raw_len) \
                 WHERE c.id = u.id AND c.pack = u.from_pack",
                &[&ids, &from, &to, &offsets, &stored, &raw],
            )
            .map_err(self.fail("relocating chunks"))
    }

    fn scan(&self, f: &mut dyn FnMut(ChunkId, Location, i64) -> Result<()>) -> Result<()> {
        let mut c = self.conn()?;
        let mut after: Vec<u8> = Vec::new();
        loop {
            let rows = c
                .query(
                    "SELECT id, pack, pack_offset, stored_len, raw_len, inserted_ms FROM chunks \
                     WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &SCAN_PAGE],
                )
                .map_err(self.fail("scanning the chunk index"))?;
            for r in &rows {
                let Some(id) = ChunkId::from_slice(r.get(0)) else {
                    continue;
                };
                f(id, location(r, 1)?, r.get(5))?;
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == SCAN_PAGE => after = last.get(0),
                _ => return Ok(()),
            }
        }
    }

    fn stats(&self) -> Result<IndexStats> {
        let r = self
            .conn()?
            .query_one(
                "SELECT count(*), COALESCE(sum(raw_len), 0)::int8, \
                 COALESCE(sum(stored_len), 0)::int8 FROM chunks",
                &[],
            )
            .map_err(self.fail("counting the chunk index"))?;
        let n = |i: usize| r.get::<_, i64>(i) as u64;
        Ok(IndexStats {
            chunks: n(0),
            raw_bytes: n(1),
            stored_bytes: n(2),
        })
    }
}
