//! The local side: scanning a directory (honouring `.lbsyncignore`), fingerprints, and the index
//! of chunks that local files already hold.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use lbsync_chunkstore::{ChunkId, Manifest};
use lbsync_proto::SyncPath;
use tracing::warn;

use crate::error::{Error, Result};
use crate::state::{Fingerprint, Kind, STATE_DIR, StateStore};

/// The name of ignore files (gitignore syntax), anywhere in the tree.
pub const IGNORE_FILE: &str = ".lbsyncignore";

/// The fingerprint of a path on disk, without following a final symlink; `None` if it does not
/// exist or is neither a file, a directory nor a symlink.
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let md = fs::symlink_metadata(path).ok()?;
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        return None;
    };
    let target = if kind == Kind::Symlink {
        Some(fs::read_link(path).ok()?.to_str()?.to_owned())
    } else {
        None
    };
    Some(Fingerprint {
        kind,
        size: if kind == Kind::File { md.len() } else { 0 },
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        inode: md.ino(),
        mode: md.mode() & 0o7777,
        target,
    })
}

/// Whether a path looks as it did when synced. Directories change their mtime whenever their
/// children do, so for them only the kind and the exec bits count.
pub fn unchanged(now: &Fingerprint, synced: &Fingerprint) -> bool {
    match now.kind {
        Kind::Dir => synced.kind == Kind::Dir,
        Kind::Symlink => synced.kind == Kind::Symlink && now.target == synced.target,
        Kind::File => now == synced,
    }
}

/// Every path under `root` that syncs: not `.lbsync/`, not excluded by a `.lbsyncignore`, not
/// special files, not names that are not UTF-8 (those are reported).
pub fn scan(root: &Path) -> Result<BTreeMap<SyncPath, Fingerprint>> {
    let mut out = BTreeMap::new();
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .ignore(false)
        .git_ignore(false)
        .git_global(false)
        .git_exclude(false)
        .parents(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .filter_entry(|e| e.depth() != 1 || e.file_name() != STATE_DIR)
        .build();
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                warn!("skipped while scanning: {e}");
                continue;
            }
        };
        if entry.depth() == 0 {
            continue;
        }
        let path = match SyncPath::from_local(root, entry.path()) {
            Ok(p) => p,
            Err(e) => {
                warn!("skipped {}: {e}", entry.path().display());
                continue;
            }
        };
        if let Some(fp) = fingerprint(entry.path()) {
            out.insert(path, fp);
        }
    }
    Ok(out)
}

/// Whether `path` (relative) is excluded by the `.lbsyncignore` files of `root`.
pub fn is_ignored(root: &Path, path: &SyncPath, is_dir: bool) -> bool {
    if path.as_str() == STATE_DIR || path.as_str().starts_with(".lbsync/") {
        return true;
    }
    // Check each ancestor directory's ignore file, nearest last (gitignore semantics).
    let mut dirs = vec![root.to_path_buf()];
    let parts: Vec<&str> = path.as_str().split('/').collect();
    for i in 1..parts.len() {
        dirs.push(root.join(parts[..i].join("/")));
    }
    let mut ignored = false;
    for (depth, dir) in dirs.iter().enumerate() {
        let file = dir.join(IGNORE_FILE);
        if !file.exists() {
            continue;
        }
        let mut b = ignore::gitignore::GitignoreBuilder::new(dir);
        if b.add(&file).is_some() {
            continue;
        }
        let Ok(gi) = b.build() else { continue };
        // Any ancestor directory matching excludes everything below it.
        for j in depth + 1..=parts.len() {
            let sub = root.join(parts[..j].join("/"));
            let m = gi.matched(&sub, j < parts.len() || is_dir);
            if m.is_ignore() {
                ignored = true;
            } else if m.is_whitelist() {
                ignored = false;
            }
        }
    }
    ignored
}

/// Where a chunk can be read locally: a file of the index, and a place in it. 16 bytes, so that
/// the index of a folder with millions of chunks stays small.
#[derive(Clone, Copy, Debug)]
struct LocalChunk {
    file: u32,
    len: u32,
    offset: u64,
}

/// The chunks of the synced files: known to be on the server, and readable from disk (checked by
/// hashing when read: the file may have changed since).
///
/// Chunks are keyed by the first 8 bytes of their id. Two ids sharing them (about one chance in
/// 10^7 with a million chunks) cost nothing but a wasted read: `read` re-hashes, and a chunk
/// wrongly believed on the server comes back from the commit as missing and is sent then.
#[derive(Default)]
pub struct ChunkIndex {
    files: Vec<SyncPath>,
    file_ids: HashMap<SyncPath, u32>,
    chunks: HashMap<u64, LocalChunk>,
    manifests: HashMap<lbsync_chunkstore::ManifestId, u32>,
}

/// A chunk id's first 8 bytes: the key of the local index and of an upload's set of sent chunks.
pub(crate) fn key(id: &ChunkId) -> u64 {
    u64::from_le_bytes(id.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl ChunkIndex {
    /// The index of every synced file whose manifest is cached.
    pub fn build(state: &StateStore) -> Self {
        let mut index = Self::default();
        for (path, synced) in &state.state.files {
            let (Some(id), Ok(path)) = (synced.manifest_id(), SyncPath::new(path.clone())) else {
                continue;
            };
            if let Some(m) = state.manifest(&id) {
                index.add(&path, &m);
            }
        }
        index
    }

    /// Adds a synced file.
    pub fn add(&mut self, path: &SyncPath, m: &Manifest) {
        let file = match self.file_ids.get(path) {
            Some(&f) => f,
            None => {
                let f = self.files.len() as u32;
                self.files.push(path.clone());
                self.file_ids.insert(path.clone(), f);
                f
            }
        };
        self.manifests.insert(m.id(), file);
        self.chunks.reserve(m.chunks().len());
        for (offset, c) in m.with_offsets() {
            self.chunks.entry(key(&c.id)).or_insert(LocalChunk {
                file,
                len: c.len,
                offset,
            });
        }
    }

    /// Whether the chunk is known to be on the server.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(&key(id))
    }

    /// Whether a synced file has this manifest (so the server has it).
    pub fn has_manifest(&self, id: &lbsync_chunkstore::ManifestId) -> bool {
        self.manifests.contains_key(id)
    }

    /// The chunk's bytes from a local file, if they are still there.
    pub fn read(&self, root: &Path, id: &ChunkId) -> Option<bytes::Bytes> {
        let at = self.chunks.get(&key(id))?;
        let path = self.files.get(at.file as usize)?;
        let file = fs::File::open(path.to_local(root)).ok()?;
        let mut buf = vec![0u8; at.len as usize];
        file.read_exact_at(&mut buf, at.offset).ok()?;
        (ChunkId::of(&buf) == *id).then(|| buf.into())
    }
}

/// Hashes a local file into its manifest (to compare content with the server's), with the
/// parameters for its size (see [`lbsync_chunkstore::ChunkParams::for_file`]).
pub fn manifest_of(path: &Path, params: lbsync_chunkstore::ChunkParams) -> Result<Manifest> {
    let file = fs::File::open(path).map_err(Error::io(format!("reading {}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let params = params.for_file(len);
    let mut refs = Vec::with_capacity((len / u64::from(params.avg_size) + 16) as usize);
    lbsync_chunkstore::chunk_pipelined::<_, Error>(file, params, |_, c| {
        refs.push(c.chunk_ref());
        Ok(())
    })?;
    Ok(Manifest::new(refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_skips_state_and_ignored_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join(".lbsync/tmp")).unwrap();
        fs::create_dir_all(root.join("src/build")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("src/a.rs"), b"x").unwrap();
        fs::write(root.join("src/build/out.o"), b"x").unwrap();
        fs::write(root.join("notes.tmp"), b"x").unwrap();
        fs::write(root.join(IGNORE_FILE), b"*.tmp\nbuild/\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let paths: Vec<String> = scan(root).unwrap().keys().map(|p| p.to_string()).collect();
        assert_eq!(paths, [".lbsyncignore", "empty", "link", "src", "src/a.rs"]);
        assert!(is_ignored(root, &SyncPath::new("x/y.tmp").unwrap(), false));
        assert!(is_ignored(
            root,
            &SyncPath::new("src/build/new.o").unwrap(),
            false
        ));
        assert!(!is_ignored(
            root,
            &SyncPath::new("src/b.rs").unwrap(),
            false
        ));
        let link = fingerprint(&root.join("link")).unwrap();
        assert_eq!(
            link.target.as_deref(),
            Some("/etc/passwd"),
            "a link is stored, not followed"
        );
    }
}
