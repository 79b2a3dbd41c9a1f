//! Per-folder dedup scopes: which chunks and manifests a folder can reach.
//!
//! Tree `scope/F`: a 32-byte chunk id, or `m` + a 32-byte manifest id → empty. A chunk enters F's
//! scope when it is uploaded through F (PutChunks naming F) or referenced by a manifest committed
//! in F; a manifest when it is committed in F. A user's `MissingChunks` for F answers "present"
//! only for chunks in F's scope (and in the store); `GetChunks`/`GetManifest` for F serve only
//! what is in it; a commit in F may reference only chunks and manifests in it (else the chunks are
//! answered missing and the manifest unknown, as if the store lacked them). A chunk another
//! folder holds is thus uploaded again through F: it is re-hashed, stored once (the store
//! deduplicates it silently) and added to F's scope. So no user learns whether someone else holds
//! a content, and none can read a chunk by naming its id.
//!
//! Scope entries are only ever added, and may outlive their chunks (`gc`); every "present" answer
//! also asks the store. Stores from before scopes get theirs built at open from every retained
//! version of every folder ([`SledScopes::open`]).

use lbsync_chunkstore::{ChunkId, ChunkStore, Manifest, ManifestId, PackStore};

use crate::error::Result;
use crate::meta::{FolderMeta, ScopeMeta};

/// The `meta`-like key in tree `scopes` that says every folder's scope has been built.
const BUILT_KEY: &[u8] = b"built";

/// The dedup scopes of one store's folders.
#[derive(Clone)]
pub struct SledScopes {
    db: sled::Db,
}

fn manifest_key(id: &ManifestId) -> [u8; 33] {
    let mut k = [b'm'; 33];
    k[1..].copy_from_slice(id.as_bytes());
    k
}

impl SledScopes {
    /// The scopes of `store`'s folders; builds them first for a store from before scopes.
    pub fn open(store: &PackStore, folders: &dyn FolderMeta) -> Result<Self> {
        let db = store.db().clone();
        let marks = db.open_tree("scopes")?;
        let s = Self { db };
        if !marks.contains_key(BUILT_KEY)? {
            let mut built = 0u64;
            for folder in folders.names()? {
                let mut manifests = Vec::new();
                folders.prune_history(&folder, usize::MAX, i64::MAX, true, &mut |e| {
                    manifests.extend(e.manifest.filter(|_| !e.deleted));
                })?;
                for e in folders.current_entries(&folder)? {
                    manifests.extend(e.manifest.filter(|_| !e.deleted));
                }
                for id in manifests {
                    // A manifest the store lost stays out of scope; fsck reports it.
                    if let Some(m) = store.get_manifest(&id)? {
                        s.add_manifest(&folder, &m, true)?;
                        built += 1;
                    }
                }
            }
            marks.insert(BUILT_KEY, &[])?;
            db_flush(&s.db)?;
            if built > 0 {
                tracing::info!("built the folders' dedup scopes from {built} file versions");
            }
        }
        Ok(s)
    }

    fn tree(&self, folder: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(format!("scope/{folder}"))?)
    }
}

impl ScopeMeta for SledScopes {
    /// Adds chunks to the folder's scope.
    fn add_chunks(&self, folder: &str, ids: &[ChunkId]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.insert(id.as_bytes().as_slice(), &[]);
        }
        self.tree(folder)?.apply_batch(batch)?;
        Ok(())
    }

    /// Adds a manifest to the folder's scope, and its chunks when `with_chunks` (a delta's base
    /// already in scope brought most of them: the caller adds the new ones).
    fn add_manifest(&self, folder: &str, m: &Manifest, with_chunks: bool) -> Result<()> {
        let mut batch = sled::Batch::default();
        batch.insert(manifest_key(&m.id()).as_slice(), &[]);
        if with_chunks {
            for c in m.chunks() {
                batch.insert(c.id.as_bytes().as_slice(), &[]);
            }
        }
        self.tree(folder)?.apply_batch(batch)?;
        Ok(())
    }

    /// Whether the chunk is in the folder's scope.
    fn has_chunk(&self, folder: &str, id: &ChunkId) -> Result<bool> {
        Ok(self.tree(folder)?.contains_key(id.as_bytes())?)
    }

    /// Whether the manifest is in the folder's scope.
    fn has_manifest(&self, folder: &str, id: &ManifestId) -> Result<bool> {
        Ok(self.tree(folder)?.contains_key(manifest_key(id))?)
    }

    /// Those of `ids` that are not in the folder's scope, in order.
    fn outside(&self, folder: &str, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let t = self.tree(folder)?;
        let mut out = Vec::new();
        for id in ids {
            if !t.contains_key(id.as_bytes())? {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// What `MissingChunks` answers for the folder: the ids not both in its scope and stored, each
    /// once, in request order.
    fn missing(
        &self,
        store: &dyn ChunkStore,
        folder: &str,
        ids: &[ChunkId],
    ) -> Result<Vec<ChunkId>> {
        let t = self.tree(folder)?;
        let stored_missing: std::collections::HashSet<ChunkId> =
            store.missing(ids)?.into_iter().collect();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for id in ids {
            if seen.insert(*id)
                && (stored_missing.contains(id) || !t.contains_key(id.as_bytes())?)
            {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// Drops the scope entries whose chunk or manifest the store no longer holds (after `gc`);
    /// returns how many.
    fn prune(&self, store: &dyn ChunkStore) -> Result<u64> {
        let mut dropped = 0;
        for name in self.db.tree_names() {
            if !name.starts_with(b"scope/") {
                continue;
            }
            let tree = self.db.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            for key in tree.iter().keys() {
                let key = key?;
                // A manifest is stored as a chunk of its encoding: its id is that chunk's.
                let id = match key.len() {
                    33 => ChunkId::from_slice(&key[1..]),
                    _ => ChunkId::from_slice(&key),
                };
                if id.map_or(Ok(false), |id| store.contains(&id))? {
                    continue;
                }
                batch.remove(key);
                dropped += 1;
            }
            tree.apply_batch(batch)?;
        }
        db_flush(&self.db)?;
        Ok(dropped)
    }
}

fn db_flush(db: &sled::Db) -> Result<()> {
    db.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbsync_chunkstore::Chunk;
    use lbsync_proto::{CommitOutcome, Entry, SyncPath};

    #[test]
    fn a_store_from_before_scopes_gets_them_from_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = PackStore::open(dir.path()).unwrap();
        let folders = crate::folders::SledFolders::open(store.db()).unwrap();
        folders.ensure("a").unwrap();
        folders.ensure("b").unwrap();
        let chunk = Chunk::new(b"hello scope".to_vec());
        store.insert_batch(std::slice::from_ref(&chunk)).unwrap();
        let m = Manifest::new(vec![chunk.chunk_ref()]);
        store.put_manifest(&m).unwrap();
        let e = Entry::file(SyncPath::new("x").unwrap(), &m, "d");
        assert!(matches!(
            folders.commit("a", e, 0).unwrap(),
            CommitOutcome::Committed(_)
        ));

        let scopes = SledScopes::open(&store, &folders).unwrap();
        assert!(scopes.has_chunk("a", &chunk.id()).unwrap());
        assert!(scopes.has_manifest("a", &m.id()).unwrap());
        assert!(!scopes.has_chunk("b", &chunk.id()).unwrap());
        assert_eq!(
            scopes
                .missing(&store, "b", &[chunk.id(), chunk.id()])
                .unwrap(),
            [chunk.id()]
        );
        assert!(
            scopes
                .missing(&store, "a", &[chunk.id()])
                .unwrap()
                .is_empty()
        );
        // In scope but not stored (collected since) is missing too.
        let gone = ChunkId::of(b"never stored");
        scopes.add_chunks("b", &[gone]).unwrap();
        assert_eq!(scopes.missing(&store, "b", &[gone]).unwrap(), [gone]);
        assert_eq!(
            scopes.outside("b", &[gone, chunk.id()]).unwrap(),
            [chunk.id()]
        );
        assert_eq!(
            scopes.prune(&store).unwrap(),
            1,
            "the entry of a chunk not stored"
        );
        assert!(!scopes.outside("b", &[gone]).unwrap().is_empty());
        assert!(scopes.has_chunk("a", &chunk.id()).unwrap());
        assert!(scopes.has_manifest("a", &m.id()).unwrap());
    }
}
