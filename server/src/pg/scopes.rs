//! [`ScopeMeta`] in PostgreSQL: table `scopes (folder, kind, id)`, kind [`CHUNK`] or
//! [`MANIFEST`]. Behaves as the sled backend ([`crate::scope`]) does.

use std::collections::HashSet;

use lbsync_chunkstore::{ChunkId, ChunkStore, Manifest, ManifestId};

use super::Db;
use crate::error::Result;
use crate::meta::ScopeMeta;

/// `scopes.kind` of a chunk id.
const CHUNK: i16 = 0;
/// `scopes.kind` of a manifest id.
const MANIFEST: i16 = 1;
/// Most ids one statement sends.
const IDS_PER_STATEMENT: usize = 8192;
/// Rows one pass of [`ScopeMeta::prune`] reads at a time.
const PRUNE_PAGE: i64 = 8192;

const INSERT: &str = "INSERT INTO scopes (folder, kind, id) \
                      SELECT $1, $2, unnest($3::bytea[]) ON CONFLICT DO NOTHING";

/// The dedup scopes of a PostgreSQL database's folders.
pub struct PgScopes {
    db: Db,
}

fn bytes_of(ids: &[ChunkId]) -> Vec<&[u8]> {
    ids.iter().map(|id| id.as_bytes().as_slice()).collect()
}

impl PgScopes {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
    }

    /// Which of `ids` are in the folder's scope (as chunks): one query a few thousand.
    fn in_scope(&self, folder: &str, ids: &[ChunkId]) -> Result<HashSet<ChunkId>> {
        let mut c = self.db.conn()?;
        let mut found = HashSet::new();
        for part in ids.chunks(IDS_PER_STATEMENT) {
            for r in c
                .query(
                    "SELECT id FROM scopes WHERE folder = $1 AND kind = $2 AND id = ANY($3)",
                    &[&folder, &CHUNK, &bytes_of(part)],
                )
                .map_err(self.db.fail("reading a folder's scope"))?
            {
                found.extend(ChunkId::from_slice(r.get(0)));
            }
        }
        Ok(found)
    }

    fn has(&self, folder: &str, kind: i16, id: &[u8]) -> Result<bool> {
        Ok(self
            .db
            .conn()?
            .query_opt(
                "SELECT 1 FROM scopes WHERE folder = $1 AND kind = $2 AND id = $3",
                &[&folder, &kind, &id],
            )
            .map_err(self.db.fail("reading a folder's scope"))?
            .is_some())
    }
}

impl ScopeMeta for PgScopes {
    fn add_chunks(&self, folder: &str, ids: &[ChunkId]) -> Result<()> {
        let mut c = self.db.conn()?;
        for part in ids.chunks(IDS_PER_STATEMENT) {
            c.execute(INSERT, &[&folder, &CHUNK, &bytes_of(part)])
                .map_err(self.db.fail("adding chunks to a folder's scope"))?;
        }
        Ok(())
    }

    fn add_manifest(&self, folder: &str, m: &Manifest, with_chunks: bool) -> Result<()> {
        let mut c = self.db.conn()?;
        // The manifest and its chunks together, as sled's one batch.
        let mut tx = c
            .transaction()
            .map_err(self.db.fail("starting a scope update"))?;
        let id = m.id();
        tx.execute(
            INSERT,
            &[&folder, &MANIFEST, &vec![id.as_bytes().as_slice()]],
        )
        .map_err(self.db.fail("adding a manifest to a folder's scope"))?;
        if with_chunks {
            let ids: Vec<ChunkId> = m.chunks().iter().map(|c| c.id).collect();
            for part in ids.chunks(IDS_PER_STATEMENT) {
                tx.execute(INSERT, &[&folder, &CHUNK, &bytes_of(part)])
                    .map_err(
                        self.db
                            .fail("adding a manifest's chunks to a folder's scope"),
                    )?;
            }
        }
        tx.commit()
            .map_err(self.db.fail("committing a scope update"))?;
        Ok(())
    }

    fn has_chunk(&self, folder: &str, id: &ChunkId) -> Result<bool> {
        self.has(folder, CHUNK, id.as_bytes())
    }

    fn has_manifest(&self, folder: &str, id: &ManifestId) -> Result<bool> {
        self.has(folder, MANIFEST, id.as_bytes())
    }

    fn outside(&self, folder: &str, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let found = self.in_scope(folder, ids)?;
        Ok(ids
            .iter()
            .filter(|id| !found.contains(id))
            .copied()
            .collect())
    }

    fn missing(
        &self,
        store: &dyn ChunkStore,
        folder: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>> {
        let stored_missing: HashSet<ChunkId> = store.missing(ids)?.into_iter().collect();
        let found = self.in_scope(folder, ids)?;
        let mut seen = HashSet::new();
        Ok(ids
            .iter()
            .filter(|id| seen.insert(**id) && (stored_missing.contains(id) || !found.contains(id)))
            .copied()
            .collect())
    }

    fn prune(&self, store: &dyn ChunkStore) -> Result<u64> {
        let mut c = self.db.conn()?;
        let mut dropped = 0u64;
        // Keyset pages over the primary key, so memory stays bounded however many rows.
        let mut after: (String, i16, Vec<u8>) = (String::new(), -1, Vec::new());
        loop {
            let rows = c
                .query(
                    "SELECT folder, kind, id FROM scopes WHERE (folder, kind, id) > ($1, $2, $3) \
                     ORDER BY folder, kind, id LIMIT $4",
                    &[&after.0, &after.1, &after.2, &PRUNE_PAGE],
                )
                .map_err(self.db.fail("reading the scopes"))?;
            let Some(last) = rows.last() else { break };
            after = (last.get(0), last.get(1), last.get(2));
            let (mut folders, mut kinds, mut ids) = (Vec::new(), Vec::new(), Vec::new());
            for r in &rows {
                let id: &[u8] = r.get(2);
                // A manifest is stored as a chunk of its encoding: its id is that chunk's.
                if ChunkId::from_slice(id).map_or(Ok(false), |id| store.contains(&id))? {
                    continue;
                }
                folders.push(r.get::<_, String>(0));
                kinds.push(r.get::<_, i16>(1));
                ids.push(id.to_vec());
            }
            if !ids.is_empty() {
                dropped += c
                    .execute(
                        "DELETE FROM scopes WHERE (folder, kind, id) IN \
                         (SELECT * FROM UNNEST($1::text[], $2::int2[], $3::bytea[]))",
                        &[&folders, &kinds, &ids],
                    )
                    .map_err(self.db.fail("pruning the scopes"))?;
            }
            if (rows.len() as i64) < PRUNE_PAGE {
                break;
            }
        }
        Ok(dropped)
    }
}
