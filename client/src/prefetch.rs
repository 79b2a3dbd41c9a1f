//! Downloads of many small files in a few calls. Before a group of the server's entries is
//! applied, the manifests of its files come in one `GetManifests` call and the chunks that no
//! local file holds in one `GetChunks` stream; each download then finds them at hand and makes
//! no call of its own. Without this, every small file cost two round trips (`GetManifest`, then
//! `GetChunks`), which is what a first download of a tree of small files spent its time on.
//!
//! Best effort: whatever did not come (an older server without `GetManifests`, a manifest past
//! the answer's budget, a broken connection) is fetched by the file's own download as before, and
//! every chunk is checked against its id on arrival in either case.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use lbsync_chunkstore::{ChunkId, Manifest, ManifestId};
use lbsync_proto::{Entry, EntryKind};
use tracing::debug;

use crate::cache::CACHED_FILE_MAX;
use crate::local::ChunkIndex;
use crate::remote::{DeltaBases, Remote};
use crate::state::{StateStore, Synced};

/// Entries a group at most.
pub(crate) const GROUP_ENTRIES: usize = 2048;
/// Bytes of prefetched chunks a group at most (the files' sizes, before compression).
pub(crate) const GROUP_BYTES: u64 = 16 << 20;

/// Chunks fetched ahead for the downloads of one group.
#[derive(Default)]
pub(crate) struct Prefetched {
    chunks: HashMap<ChunkId, Bytes>,
}

impl Prefetched {
    /// A prefetched chunk's bytes (checked against its id when it came).
    pub(crate) fn chunk(&self, id: &ChunkId) -> Option<Bytes> {
        self.chunks.get(id).cloned()
    }
}

/// Splits the entries to apply, in order, into groups of at most [`GROUP_ENTRIES`] entries and
/// about [`GROUP_BYTES`] of small files.
pub(crate) fn groups(entries: &[Entry]) -> Vec<&[Entry]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, r) in entries.iter().enumerate() {
        if small_file(r) {
            bytes += r.size;
        }
        if i + 1 - start >= GROUP_ENTRIES || bytes >= GROUP_BYTES {
            groups.push(&entries[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < entries.len() {
        groups.push(&entries[start..]);
    }
    groups
}

fn small_file(r: &Entry) -> bool {
    r.kind == EntryKind::File && !r.deleted && r.manifest.is_some() && r.size <= CACHED_FILE_MAX
}

/// Fetches what the downloads of `group` will need: manifests not cached (into the state's cache,
/// where the downloads look first) and, for files this side never had, the chunks that no local
/// file holds.
pub(crate) async fn fetch(
    remote: &mut Remote,
    state: &StateStore,
    index: &ChunkIndex,
    group: &[Entry],
) -> Prefetched {
    // Per file to fetch: its manifest's id, the manifest if cached, and whether a version of it
    // is here.
    let mut manifests: Vec<(ManifestId, Option<Manifest>, bool)> = Vec::new();
    let mut wanted: Vec<(ManifestId, Option<Manifest>)> = Vec::new();
    let mut seen = HashSet::new();
    for r in group.iter().filter(|r| small_file(r)) {
        let id = r.manifest.expect("small files have one");
        let synced = state
            .state
            .files
            .get(r.path.as_str())
            .and_then(Synced::manifest_id);
        if synced == Some(id) {
            // The same bytes: applied in place, nothing to fetch.
            continue;
        }
        let base = synced.and_then(|b| state.manifest(&b));
        let cached = state.manifest(&id);
        if cached.is_none() && seen.insert(id) {
            wanted.push((id, base));
        }
        manifests.push((id, cached, synced.is_some()));
    }
    let mut got: HashMap<ManifestId, Manifest> = HashMap::new();
    for batch in wanted.chunks(remote.max_ids()) {
        let asked: Vec<(ManifestId, Option<&Manifest>)> =
            batch.iter().map(|(id, b)| (*id, b.as_ref())).collect();
        match remote.manifests(&asked).await {
            Ok(answers) => {
                for m in answers.into_iter().flatten() {
                    // Cached like any manifest a download fetched (saved with the next save,
                    // pruned once no synced file names it).
                    let _ = state.put_manifest(&m);
                    got.insert(m.id(), m);
                }
            }
            Err(e) => {
                debug!("manifests of the next downloads not fetched together: {e}");
                return Prefetched::default();
            }
        }
    }
    // Chunks, for files with no version here (an edited one's chunks may come as deltas against
    // the version it replaces, which its own download asks for).
    let (mut need, mut bytes, mut asked) = (Vec::new(), 0u64, HashSet::new());
    for (id, m, has_base) in &manifests {
        if *has_base {
            continue;
        }
        let Some(m) = m.as_ref().or_else(|| got.get(id)) else {
            continue;
        };
        for c in m.chunks() {
            if !index.contains(&c.id) && asked.insert(c.id) {
                need.push(c.id);
                bytes += u64::from(c.len);
            }
        }
        if bytes >= GROUP_BYTES {
            break;
        }
    }
    if need.is_empty() {
        return Prefetched::default();
    }
    let max_len = remote.params.largest_chunk();
    match remote.chunks(&need, &DeltaBases::new(), max_len).await {
        Ok(chunks) => Prefetched { chunks },
        Err(e) => {
            debug!("chunks of the next downloads not fetched together: {e}");
            Prefetched::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbsync_proto::SyncPath;

    fn file(i: usize, size: u64) -> Entry {
        let mut m = Manifest::empty();
        if size > 0 {
            m = Manifest::new(vec![lbsync_chunkstore::ChunkRef {
                id: ChunkId::of(&i.to_le_bytes()),
                len: size as u32,
            }]);
        }
        Entry {
            size,
            ..Entry::file(SyncPath::new(format!("f{i}")).unwrap(), &m, "d")
        }
    }

    #[test]
    fn groups_cover_every_entry_in_order_and_are_bounded() {
        let entries: Vec<Entry> = (0..5000).map(|i| file(i, 10_000)).collect();
        let split = groups(&entries);
        assert!(split.iter().all(|g| g.len() <= GROUP_ENTRIES));
        let bytes = |g: &[Entry]| g.iter().map(|r| r.size).sum::<u64>();
        assert!(split.iter().all(|g| bytes(g) < GROUP_BYTES + 10_000));
        let flat: Vec<&SyncPath> = split
            .iter()
            .flat_map(|g| g.iter().map(|r| &r.path))
            .collect();
        let want: Vec<&SyncPath> = entries.iter().map(|r| &r.path).collect();
        assert_eq!(flat, want);
        assert!(groups(&[]).is_empty());
        // Large files do not count against the bytes: they are never prefetched.
        let large: Vec<Entry> = (0..10).map(|i| file(i, 1 << 30)).collect();
        assert_eq!(groups(&large).len(), 1);
    }
}
