//! The local side: scanning a directory (honouring `.lbsyncignore`), fingerprints, and the index
//! of chunks that local files already hold.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use lbsync_chunkstore::{ChunkId, Manifest};
use lbsync_proto::SyncPath;
use tracing::warn;

use crate::codec::Piece;
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
        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        dev: md.dev(),
    })
}

/// Whether a path looks as it did when synced: kind, size, mtime, inode, mode and ctime (which
/// every write and chmod moves and no program can set back). Directories change their mtime
/// whenever their children do, so for them only the kind counts.
pub fn unchanged(now: &Fingerprint, synced: &Fingerprint) -> bool {
    match now.kind {
        Kind::Dir => synced.kind == Kind::Dir,
        Kind::Symlink => synced.kind == Kind::Symlink && now.target == synced.target,
        Kind::File => now == synced,
    }
}

/// [`unchanged`] for a file this client itself just renamed (moved aside, swapped out): a rename
/// moves the ctime, so it is left out; the other fields still tell an edit.
pub fn same_file(now: &Fingerprint, synced: &Fingerprint) -> bool {
    let strip = |f: &Fingerprint| Fingerprint {
        ctime_ns: 0,
        ..f.clone()
    };
    unchanged(&strip(now), &strip(synced))
}

/// What a scan saw of the folder.
#[derive(Debug, Default)]
pub struct LocalTree {
    /// Every path that syncs, with its fingerprint.
    pub files: BTreeMap<SyncPath, Fingerprint>,
    /// Subtrees that could not be read (permission, I/O error, vanished while scanned, another
    /// file system mounted there): what is under them is unknown, never taken as deleted.
    pub unknown: Vec<(SyncPath, String)>,
}

impl LocalTree {
    /// Why `path` is unknown (it is in, or is, a subtree the scan could not read), if it is.
    pub fn unknown_reason(&self, path: &SyncPath) -> Option<&str> {
        self.unknown
            .iter()
            .find(|(u, _)| path == u || path.as_str().starts_with(&format!("{u}/")))
            .map(|(_, why)| why.as_str())
    }
}

/// The path an error of the walker is about, if it says.
fn error_path(e: &ignore::Error) -> Option<&Path> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Loop { child, .. } => Some(child),
        _ => None,
    }
}

/// Every path under `root` that syncs: not `.lbsync/`, not excluded by a `.lbsyncignore`, not
/// special files, not names that are not UTF-8 (those are reported). A subtree that cannot be
/// read is reported in [`LocalTree::unknown`]; an error that names no path, or one at the root,
/// fails the scan (then nothing is known, and nothing may be taken as deleted).
pub fn scan(root: &Path) -> Result<LocalTree> {
    let root_dev = fs::symlink_metadata(root)
        .map_err(Error::io(format!("scanning {}", root.display())))?
        .dev();
    let mounts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let found = mounts.clone();
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .ignore(false)
        .git_ignore(false)
        .git_global(false)
        .git_exclude(false)
        .parents(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .filter_entry(move |e| {
            if e.depth() == 1 && e.file_name() == STATE_DIR {
                return false;
            }
            // Another file system mounted inside the folder is not crossed: unmounted, it
            // would look like a deleted subtree.
            let other_fs = e.file_type().is_some_and(|t| t.is_dir())
                && e.metadata().is_ok_and(|m| m.dev() != root_dev);
            if other_fs {
                found
                    .lock()
                    .expect("not poisoned")
                    .push(e.path().to_path_buf());
            }
            !other_fs
        })
        .build();
    let mut tree = LocalTree::default();
    let unknown_at = |tree: &mut LocalTree, at: &Path, why: String| -> Result<()> {
        match SyncPath::from_local(root, at) {
            Ok(p) => {
                warn!(
                    "cannot read {}: {why}; nothing under it is synced or deleted",
                    at.display()
                );
                tree.unknown.push((p, why));
                Ok(())
            }
            Err(_) => Err(Error::Usage(format!(
                "scanning {} failed: {why}",
                root.display()
            ))),
        }
    };
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let why = match e.io_error() {
                    Some(io) => io.to_string(),
                    None => e.to_string(),
                };
                match error_path(&e) {
                    // An unreadable .lbsyncignore leaves the rules of its directory unknown.
                    Some(p) if p.file_name().is_some_and(|n| n == IGNORE_FILE) => {
                        let dir = p.parent().unwrap_or(root).to_path_buf();
                        unknown_at(&mut tree, &dir, why)?;
                    }
                    Some(p) => unknown_at(&mut tree, p, why)?,
                    None => {
                        return Err(Error::Usage(format!(
                            "scanning {} failed: {why}",
                            root.display()
                        )));
                    }
                }
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
        match fingerprint(entry.path()) {
            Some(fp) => {
                tree.files.insert(path, fp);
            }
            // It vanished between the walk and the look: not known to be deleted.
            None if fs::symlink_metadata(entry.path()).is_err() => {
                tree.unknown
                    .push((path, "it vanished while the folder was scanned".into()));
            }
            None => {} // a socket, a fifo, a device: never synced
        }
    }
    let mounts = std::mem::take(&mut *mounts.lock().expect("not poisoned"));
    for m in mounts {
        unknown_at(&mut tree, &m, "another file system is mounted there".into())?;
    }
    Ok(tree)
}

/// The ignore rules of a folder, read once per sync: which paths `.lbsyncignore` files exclude.
#[derive(Default)]
pub struct IgnoreRules {
    dirs: std::sync::Mutex<HashMap<String, Option<ignore::gitignore::Gitignore>>>,
}

impl IgnoreRules {
    /// Whether `path` (relative) is excluded by the `.lbsyncignore` files of `root` (in its
    /// directory or any parent, nearest last, as in gitignore; an excluded directory excludes
    /// everything below it).
    pub fn ignored(&self, root: &Path, path: &SyncPath, is_dir: bool) -> bool {
        if path.as_str() == STATE_DIR || path.as_str().starts_with(".lbsync/") {
            return true;
        }
        let parts: Vec<&str> = path.as_str().split('/').collect();
        // Top down, as the scan walks: the first excluded directory excludes everything below
        // it (no rule further down can bring a path back, and its ignore files are not read).
        for j in 1..=parts.len() {
            let sub = root.join(parts[..j].join("/"));
            let sub_is_dir = j < parts.len() || is_dir;
            let mut ignored = false;
            for depth in 0..j {
                let rel = parts[..depth].join("/");
                let mut cache = self.dirs.lock().expect("not poisoned");
                let gi = cache.entry(rel.clone()).or_insert_with(|| {
                    let dir = if rel.is_empty() {
                        root.to_path_buf()
                    } else {
                        root.join(&rel)
                    };
                    let file = dir.join(IGNORE_FILE);
                    if fs::symlink_metadata(&file).is_err() {
                        return None;
                    }
                    let mut b = ignore::gitignore::GitignoreBuilder::new(&dir);
                    if b.add(&file).is_some() {
                        return None;
                    }
                    b.build().ok()
                });
                let Some(gi) = gi else { continue };
                let m = gi.matched(&sub, sub_is_dir);
                if m.is_ignore() {
                    ignored = true;
                } else if m.is_whitelist() {
                    ignored = false;
                }
            }
            if ignored {
                return true;
            }
        }
        false
    }
}

/// Whether `path` (relative) is excluded by the `.lbsyncignore` files of `root`.
pub fn is_ignored(root: &Path, path: &SyncPath, is_dir: bool) -> bool {
    IgnoreRules::default().ignored(root, path, is_dir)
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
    /// Checks that bytes read are the chunk asked for.
    codec: crate::codec::FolderCodec,
}

/// A chunk id's first 8 bytes: the key of the local index and of an upload's set of sent chunks.
pub(crate) fn key(id: &ChunkId) -> u64 {
    u64::from_le_bytes(id.as_bytes()[..8].try_into().expect("8 bytes"))
}

impl ChunkIndex {
    /// The index of every synced file whose manifest is cached.
    pub fn build(state: &StateStore) -> Self {
        let mut index = Self {
            codec: state.codec.clone(),
            ..Self::default()
        };
        state.each_manifest(|path, m| {
            if let Ok(path) = SyncPath::new(path.to_owned()) {
                index.add(&path, &m);
            }
        });
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
        let file = crate::state::open_nofollow(&crate::confine::check(root, path).ok()?).ok()?;
        let mut buf = vec![0u8; at.len as usize];
        file.read_exact_at(&mut buf, at.offset).ok()?;
        self.codec.holds(id, &buf).then(|| buf.into())
    }
}

/// Hashes a local file into its manifest (to compare content with the server's), with the
/// parameters for its size (see [`lbsync_chunkstore::ChunkParams::for_file`]) and the folder's
/// chunk ids.
pub fn manifest_of(
    path: &Path,
    params: lbsync_chunkstore::ChunkParams,
    codec: &crate::codec::FolderCodec,
) -> Result<Manifest> {
    let file = crate::state::open_nofollow(path)
        .map_err(Error::io(format!("reading {}", path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let params = params.for_file(len);
    let mut refs = Vec::with_capacity((len / u64::from(params.avg_size) + 16) as usize);
    // Batched so that an encrypted folder seals on every core (`FolderCodec::pieces`).
    let (mut batch, mut batch_bytes) = (Vec::new(), 0);
    let mut flush = |batch: &mut Vec<_>| -> Result<()> {
        refs.extend(
            codec
                .pieces(std::mem::take(batch))
                .iter()
                .map(Piece::chunk_ref),
        );
        Ok(())
    };
    lbsync_chunkstore::cut_pipelined::<_, Error>(file, params, |p| {
        batch_bytes += p.data.len();
        batch.push(p.data);
        if batch_bytes >= 4 << 20 {
            batch_bytes = 0;
            flush(&mut batch)?;
        }
        Ok(())
    })?;
    flush(&mut batch)?;
    Ok(codec.manifest(refs))
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
        let paths: Vec<String> = scan(root)
            .unwrap()
            .files
            .keys()
            .map(|p| p.to_string())
            .collect();
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
        // As the walker does: nothing below an excluded directory comes back.
        fs::write(root.join(IGNORE_FILE), b"*.tmp\nbuild/\n!build/README\n").unwrap();
        assert!(is_ignored(
            root,
            &SyncPath::new("src/build/README").unwrap(),
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
