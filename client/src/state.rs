//! The client's state in `DIR/.lbsync/`: who it is, where it syncs to, how far it has read the
//! server's journal, and per path what was last synced (version, manifest, local fingerprint).
//!
//! `state.json` is replaced atomically (write a temp file, fsync, rename). Manifests of synced files
//! are cached in `manifests/<id>`, so edits go out as deltas and downloads can copy chunks from
//! local files. A crash leaves the previous state: the next sync re-hashes what changed since, and
//! a commit answered "conflict" with equal content is adopted silently, so no edit is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lbsync_chunkstore::{Manifest, ManifestId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The directory, inside a synced directory, that is never synced.
pub const STATE_DIR: &str = ".lbsync";
const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

/// What kind of thing a path is, locally or on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// How a path looked on disk when it was last synced: if it still looks so, it is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// What it is.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, Unix nanoseconds.
    pub mtime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Permission bits.
    pub mode: u32,
    /// A symlink's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A path as last synced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    /// The server version the local copy matches.
    pub version: u64,
    /// Files: the manifest (hex id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The local fingerprint at that moment.
    pub local: Fingerprint,
}

impl Synced {
    /// The manifest id, if this is a file.
    pub fn manifest_id(&self) -> Option<ManifestId> {
        self.manifest.as_deref().and_then(|m| m.parse().ok())
    }
}

/// Everything in `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// This client's random id (two clients on one machine are two devices).
    pub device_id: String,
    /// The device name.
    pub device_name: String,
    /// The server URL last used.
    pub server: String,
    /// The server folder.
    pub folder: String,
    /// The last journal seq applied.
    pub cursor: u64,
    /// When the last sync finished, Unix nanoseconds (0: never).
    pub last_sync_ns: i64,
    /// Bytes sent to the server, all syncs.
    pub bytes_sent: u64,
    /// Bytes received from the server, all syncs.
    pub bytes_received: u64,
    /// Per path, what was last synced.
    pub files: BTreeMap<String, Synced>,
    /// Paths whose last commit got no answer (the connection broke): the server may hold a
    /// version of ours that `files` does not know (see `Syncer::plan`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub in_doubt: BTreeSet<String>,
}

/// The state of one synced directory, on disk.
pub struct StateStore {
    dir: PathBuf,
    /// The loaded state.
    pub state: State,
}

impl StateStore {
    /// `DIR/.lbsync`.
    pub fn dir_of(root: &Path) -> PathBuf {
        root.join(STATE_DIR)
    }

    /// Loads the state of `root`, or a fresh one.
    pub fn load(root: &Path) -> Result<Self> {
        let dir = Self::dir_of(root);
        fs::create_dir_all(dir.join("manifests"))
            .and_then(|()| fs::create_dir_all(dir.join("tmp")))
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes).map_err(|e| Error::State {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if state.version != STATE_VERSION {
                    return Err(Error::State {
                        path,
                        reason: format!("format version {} is not {STATE_VERSION}", state.version),
                    });
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                version: STATE_VERSION,
                device_id: new_device_id(root),
                ..State::default()
            },
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        };
        Ok(Self { dir, state })
    }

    /// Writes the state atomically.
    pub fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| Error::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(Error::io(format!("saving {}", path.display())))
    }

    /// Where temporary downloads go (same file system as the synced files, so renames are atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Where the chunk cache lives (see [`crate::cache`]).
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// Deletes what interrupted runs left in the temp directory: files untouched for an hour (a
    /// download in progress in another process writes to its part file all the time).
    pub fn clear_stale_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        let hour = std::time::Duration::from_secs(3600);
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > hour);
            if stale {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Caches a manifest of a synced file.
    pub fn put_manifest(&self, m: &Manifest) -> Result<()> {
        let path = self.dir.join("manifests").join(m.id().to_string());
        if path.exists() {
            return Ok(());
        }
        let tmp = self.tmp_dir().join(format!("{}.manifest", m.id()));
        fs::write(&tmp, m.encode())
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(Error::io(format!("caching manifest {}", path.display())))
    }

    /// A cached manifest.
    pub fn manifest(&self, id: &ManifestId) -> Option<Manifest> {
        let bytes = fs::read(self.dir.join("manifests").join(id.to_string())).ok()?;
        Manifest::decode(&bytes).ok().filter(|m| m.id() == *id)
    }

    /// Deletes cached manifests no synced file uses any more.
    pub fn prune_manifests(&self) {
        let used: std::collections::HashSet<&str> = self
            .state
            .files
            .values()
            .filter_map(|s| s.manifest.as_deref())
            .collect();
        if let Ok(entries) = fs::read_dir(self.dir.join("manifests")) {
            for e in entries.flatten() {
                let name = e.file_name();
                if !used.contains(name.to_string_lossy().as_ref()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

fn new_device_id(root: &Path) -> String {
    let seed = format!(
        "{}:{}:{:?}",
        std::process::id(),
        root.display(),
        std::time::SystemTime::now()
    );
    blake3::hash(seed.as_bytes()).to_hex()[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_bad_state_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::load(dir.path()).unwrap();
        assert_eq!(s.state.device_id.len(), 8);
        s.state.cursor = 42;
        s.state.files.insert(
            "a.txt".into(),
            Synced {
                version: 3,
                manifest: Some(Manifest::empty().id().to_string()),
                local: Fingerprint {
                    kind: Kind::File,
                    size: 0,
                    mtime_ns: 1,
                    inode: 2,
                    mode: 0o644,
                    target: None,
                },
            },
        );
        s.put_manifest(&Manifest::empty()).unwrap();
        s.save().unwrap();
        let back = StateStore::load(dir.path()).unwrap();
        assert_eq!(back.state.cursor, 42);
        assert_eq!(back.state.files["a.txt"].version, 3);
        assert_eq!(
            back.manifest(&Manifest::empty().id()),
            Some(Manifest::empty())
        );

        fs::write(dir.path().join(".lbsync/state.json"), b"{not json").unwrap();
        let err = StateStore::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("state.json is unusable"), "{err}");
    }
}
