//! The sync model: what a folder holds and what a commit asks for.

use lbsync_chunkstore::{Manifest, ManifestDelta, ManifestId};

use crate::path::SyncPath;

/// The protocol version this build speaks. 2: files of 4 GiB and more are chunked with larger
/// sizes (`ChunkParams::for_file`), so both sides must agree on them. 3: chunks may travel as
/// deltas against chunks the receiver holds, and commits in batches.
pub const PROTOCOL_VERSION: u32 = 3;

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file: its content is a manifest.
    File,
    /// A directory (kept so that empty directories sync).
    Dir,
    /// A symbolic link, synced as a link, never followed.
    Symlink,
}

/// The state of one path at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where.
    pub path: SyncPath,
    /// What.
    pub kind: EntryKind,
    /// Size in bytes (files).
    pub size: u64,
    /// Permission bits (the exec bit is what travels between machines).
    pub mode: u32,
    /// Modification time, Unix nanoseconds.
    pub mtime_ns: i64,
    /// The content's manifest (files that are not deleted).
    pub manifest: Option<ManifestId>,
    /// 1 for the path's first version, +1 for each commit.
    pub version: u64,
    /// A tombstone: the path was deleted at this version.
    pub deleted: bool,
    /// The device that committed it.
    pub device: String,
    /// A symlink's target, as written.
    pub symlink_target: Option<String>,
    /// The journal sequence number of the commit.
    pub seq: u64,
    /// When the server committed it, Unix nanoseconds.
    pub committed_ns: i64,
    /// Encrypted folders: the client-sealed metadata (empty in plain folders). The server stores
    /// it as sent; only a client holding the folder key opens it.
    pub sealed: Vec<u8>,
}

impl Entry {
    /// A directory entry, before the server assigns its version.
    pub fn dir(path: SyncPath, device: &str) -> Self {
        Self::new(path, EntryKind::Dir, device)
    }

    /// A file entry, before the server assigns its version.
    pub fn file(path: SyncPath, manifest: &Manifest, device: &str) -> Self {
        Self {
            size: manifest.size(),
            manifest: Some(manifest.id()),
            ..Self::new(path, EntryKind::File, device)
        }
    }

    /// A tombstone for `path`.
    pub fn tombstone(path: SyncPath, kind: EntryKind, device: &str) -> Self {
        Self {
            deleted: true,
            ..Self::new(path, kind, device)
        }
    }

    /// An entry with everything but its path, kind and device zero.
    pub fn new(path: SyncPath, kind: EntryKind, device: &str) -> Self {
        Self {
            path,
            kind,
            size: 0,
            mode: 0,
            mtime_ns: 0,
            manifest: None,
            version: 0,
            deleted: false,
            device: device.to_owned(),
            symlink_target: None,
            seq: 0,
            committed_ns: 0,
            sealed: Vec::new(),
        }
    }
}

/// A file's content in a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A manifest the server already has (a rename or a copy: no chunk, no chunk list travels).
    Known(ManifestId),
    /// The whole manifest.
    Full(Manifest),
    /// The manifest as a delta against a manifest the server has (usually the base version's).
    Delta {
        /// The manifest the delta applies to.
        base: ManifestId,
        /// The operations.
        delta: ManifestDelta,
    },
    /// The base version's content, unchanged: a metadata-only commit. The server makes the new
    /// version from the base version's entry with these fields replaced (and the entry's device);
    /// no manifest and no chunk travel.
    Same(SameContent),
}

/// What a metadata-only commit ([`Content::Same`]) changes; `None` keeps the base version's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SameContent {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New modification time, Unix nanoseconds.
    pub mtime_ns: Option<i64>,
}

/// A request to make `entry` the path's current version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRequest {
    /// The folder.
    pub folder: String,
    /// The new entry (version and seq are assigned by the server).
    pub entry: Entry,
    /// The version the client edited; 0 for a path it believes new.
    pub base_version: u64,
    /// A file's content; `None` for directories, symlinks and deletions.
    pub content: Option<Content>,
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The entry as committed, with its version and seq.
    Committed(Entry),
    /// The path is not at the base version; this is its current entry.
    Conflict(Entry),
}

/// What one commit of a batch came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// It took effect: the path's new version and the commit's journal seq.
    Committed {
        /// The new version.
        version: u64,
        /// The journal seq.
        seq: u64,
        /// When the server committed it, Unix nanoseconds (0: not said).
        committed_ns: i64,
    },
    /// The path is not at the base version; this is its current entry.
    Conflict(Entry),
    /// The server lacks these chunks of the manifest.
    MissingChunks(Vec<lbsync_chunkstore::ChunkId>),
    /// The server does not have the manifest or delta base the commit names.
    UnknownManifest(String),
    /// The commit itself is wrong (what is wrong is said).
    Invalid(String),
    /// Not tried: an earlier commit of the batch failed for a reason not its own (said).
    NotAttempted(String),
}
