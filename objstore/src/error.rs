//! Errors of the object store.
//!
//! Policy: expected outcomes (a chunk that is absent, a chunk already present) are return values.
//! Every error names what was asked of what (the operation, the object's URL, the chunk) and says
//! what to do. object_store's error type does not leak: [`Error::Object`] holds it boxed as a
//! `dyn Error`, its message part of ours. Through the
//! [`lbsync_chunkstore::ChunkStore`] trait the errors become the chunk store's:
//! [`Error::Corrupt`] becomes `lbsync_chunkstore::Error::Corrupt`, the rest
//! `lbsync_chunkstore::Error::Backend` around this error.

use lbsync_chunkstore::ChunkId;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the object store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store URL that cannot be used; `what` says what is wrong and what to write instead.
    #[error("invalid store URL {url:?}: {what}")]
    BadUrl {
        /// The URL as given (without credentials, which are refused).
        url: String,
        /// What is wrong with it.
        what: String,
    },
    /// A request to the object store failed. The message holds object_store's (so that one line
    /// says it all); it is not also a `source`, which would say it twice in a cause chain.
    #[error("the object store at {url} failed to {op}: {cause}{hint}")]
    Object {
        /// What was asked, e.g. "read the store's config".
        op: String,
        /// The object's URL, e.g. `s3://bucket/prefix/packs/ab/ab….pack`.
        url: String,
        /// What to do about it, with a leading "; " (empty when there is nothing to say).
        hint: &'static str,
        /// object_store's error.
        cause: Box<dyn std::error::Error + Send + Sync>,
        /// Whether the store answered that the object does not exist.
        not_found: bool,
    },
    /// There is no store at the prefix, and the open was not allowed to create one.
    #[error(
        "there is no store at {url} (no config object): check the URL, or create a store there \
         (the server creates one when started with `--store` at an empty prefix)"
    )]
    NoStore {
        /// The store's URL.
        url: String,
    },
    /// A store already exists at the prefix, and the open was asked to create one.
    #[error(
        "a store already exists at {url}: open it instead, or choose another prefix for a new one"
    )]
    AlreadyExists {
        /// The store's URL.
        url: String,
    },
    /// The store's config object does not describe a usable store.
    #[error("the store at {url} is unusable: {what}")]
    BadConfig {
        /// The store's URL.
        url: String,
        /// What is wrong with its config object.
        what: String,
    },
    /// A record read from a pack object is not the chunk the index says it is.
    #[error(
        "chunk {id} in pack object {url} at offset {offset} is corrupt ({what}); the chunk \
         must be uploaded again by a client that has it"
    )]
    Corrupt {
        /// The chunk asked for.
        id: ChunkId,
        /// The pack object's URL.
        url: String,
        /// The record's offset in it.
        offset: u64,
        /// What did not check out.
        what: String,
    },
    /// A collection asked for a grace period shorter than the store's minimum, under which a
    /// commit landing during the collection could name a chunk it sweeps.
    #[error(
        "a grace period of {}s is shorter than this store's minimum of {}s (recorded when it was \
         created): a commit landing meanwhile could reference a chunk the collection sweeps; \
         collect with a grace period of at least {}s",
        grace.as_secs_f64(),
        min.as_secs_f64(),
        min.as_secs_f64()
    )]
    GraceTooShort {
        /// The grace period asked for.
        grace: std::time::Duration,
        /// The store's minimum.
        min: std::time::Duration,
    },
    /// The chunk index failed (a [`crate::ChunkIndex`] implementation's error, boxed: its
    /// message says what and what to do; shown in this one's, so not also a `source`).
    #[error("the chunk index failed: {0}")]
    Index(Box<dyn std::error::Error + Send + Sync>),
    /// A pack object name that is not 32 hex digits.
    #[error("invalid pack name {0:?}: expected 32 hexadecimal digits")]
    BadPackName(String),
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    /// The store's runtime could not be started or lost a task.
    #[error("the object store's runtime failed: {0}")]
    Runtime(String),
    /// The chunk store's own error (chunk params, a manifest, a missing live manifest).
    #[error(transparent)]
    Chunk(#[from] lbsync_chunkstore::Error),
}

impl Error {
    /// Wraps an object_store error with what was being done and a hint for the common failures.
    pub(crate) fn object(
        op: impl Into<String>,
        url: impl Into<String>,
        source: object_store::Error,
    ) -> Self {
        let hint = match &source {
            object_store::Error::PermissionDenied { .. } => {
                "; access was denied (403): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (and AWS_SESSION_TOKEN), and that the key may read and write the bucket"
            }
            object_store::Error::Unauthenticated { .. } => {
                "; the credentials were refused (401): check AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)"
            }
            object_store::Error::NotFound { .. } => {
                "; the object is gone: if the bucket was emptied or another store's gc ran on \
                 this prefix, the store has lost data"
            }
            object_store::Error::Generic { .. } => {
                "; check the endpoint, the region (AWS_REGION or ?region=) and that the object \
                 store is up"
            }
            _ => "",
        };
        Error::Object {
            op: op.into(),
            url: url.into(),
            hint,
            not_found: matches!(source, object_store::Error::NotFound { .. }),
            cause: Box::new(source),
        }
    }

    /// Whether the object store answered that the object does not exist.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Object {
                not_found: true,
                ..
            }
        )
    }

    /// Wraps an error of a [`crate::ChunkIndex`] implementation.
    pub fn index(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Index(e.into())
    }
}

impl From<Error> for lbsync_chunkstore::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Chunk(e) => e,
            // The chunk store's variant numbers its packs; an object's name does not fit, so the
            // object's URL leads `what`.
            Error::Corrupt {
                id,
                url,
                offset,
                what,
            } => lbsync_chunkstore::Error::Corrupt {
                id,
                pack: 0,
                offset,
                what: format!("in pack object {url}: {what}"),
            },
            other => lbsync_chunkstore::Error::Backend(Box::new(other)),
        }
    }
}
