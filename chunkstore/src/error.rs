//! Errors of the chunk store.
//!
//! Policy: expected outcomes (a chunk that is absent, a chunk already present) are return values, not
//! errors. Every error names what was wrong (the chunk id, the pack and offset, the path) and, where a
//! person can act, what to do about it. `sled`'s error type does not leak: it is boxed as
//! [`Error::Index`].

use std::io;
use std::path::PathBuf;

use crate::id::{ChunkId, ManifestId};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the chunk store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed; `context` says which one and on what path.
    #[error("{context}")]
    Io {
        /// What was being done, e.g. "syncing pack /var/lbsync/packs/00000001.pack".
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The sled index failed.
    #[error(
        "the chunk index failed ({0}); if this persists, stop the server and run \
         `lbsync-server fsck --repair` to rebuild the index from the packs"
    )]
    Index(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored chunk does not read back with its hash: its bytes on disk are damaged.
    #[error(
        "chunk {id} in pack {pack} at offset {offset} is corrupt ({what}); \
         run `lbsync-server fsck` to list what is damaged"
    )]
    Corrupt {
        /// The chunk that was asked for.
        id: ChunkId,
        /// The pack number holding it.
        pack: u32,
        /// The offset of its record in the pack.
        offset: u64,
        /// What did not check out.
        what: String,
    },
    /// Bytes sent as a chunk do not hash to the id they were sent under.
    #[error(
        "chunk bytes do not match their id: sent as {claimed} but they hash to {actual}; \
         re-read the file and send the chunk again"
    )]
    HashMismatch {
        /// The id the bytes came with.
        claimed: ChunkId,
        /// The BLAKE3 of the bytes.
        actual: ChunkId,
    },
    /// Bytes sent compressed do not decompress to the length they were declared with.
    #[error("chunk {id} was sent compressed, but {what}; send the chunk again")]
    BadCompression {
        /// The id the bytes came with.
        id: ChunkId,
        /// What did not check out.
        what: String,
    },
    /// Chunking parameters outside what FastCDC and the wire format allow.
    #[error("invalid chunking parameters: {0}")]
    BadParams(String),
    /// A manifest's encoding does not decode.
    #[error("malformed manifest: {0}")]
    BadManifest(String),
    /// A block delta's ops or a signature do not fit (see [`crate::apply_block_delta`]).
    #[error("malformed block delta: {0}")]
    BadDelta(String),
    /// A string that should be a 64-digit hex id is not.
    #[error("invalid id {0:?}: expected 64 hexadecimal digits (a BLAKE3-256 hash)")]
    BadId(String),
    /// The store directory is not a usable store.
    #[error("store at {dir} is unusable: {what}")]
    BadStore {
        /// The store directory.
        dir: PathBuf,
        /// What is wrong with it, and what to do.
        what: String,
    },
    /// There is no store in the directory, and the open was not allowed to create one.
    #[error(
        "there is no store at {}: check the path (--store or LBSYNC_STORE), or create a store \
         there with `lbsync-server init --store {}`",
        .dir.display(), .dir.display()
    )]
    NoStore {
        /// The directory that holds no store.
        dir: PathBuf,
    },
    /// Another process holds the store's index (sled lets one process open it).
    #[error("the store at {} is in use by another process: stop it first", .dir.display())]
    Locked {
        /// The store directory.
        dir: PathBuf,
    },
    /// The store was opened read-only and was asked to change.
    #[error(
        "store at {dir} is open read-only, so it cannot {what}; run the command that changes it \
         (e.g. `fsck --repair`, `gc` without --dry-run) while no server uses the store"
    )]
    ReadOnly {
        /// The store directory.
        dir: PathBuf,
        /// What was asked, e.g. "store chunks".
        what: &'static str,
    },
    /// A store kept elsewhere (an object store, a database) failed; the source says what was
    /// asked, of what, and what to do. Such stores live in other crates (`lbsync-objstore`),
    /// which box their own error here so that this crate learns nothing of their clients.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// Garbage collection was given a live manifest that the store does not hold.
    #[error(
        "live manifest {0} is not in the store; garbage collection stopped before deleting anything \
         (run `lbsync-server fsck` to check the store)"
    )]
    MissingManifest(ManifestId),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

#[cfg(feature = "sled")]
impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Index(Box::new(e))
    }
}
