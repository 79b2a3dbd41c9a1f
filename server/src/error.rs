//! Errors of the server, and their one mapping to gRPC statuses ([`status`]).
//!
//! Policy: every status message says what was wrong and what to do; internal errors are logged
//! once, where they are mapped.

use lbsync_chunkstore::ChunkId;
use tonic::{Code, Status};

/// The result type of the server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed or asks for something not allowed.
    #[error("{0}")]
    BadRequest(String),
    /// A commit of a CommitBatch would read or build more manifest refs than are left of the
    /// batch's budget: the rest of the batch is not tried.
    #[error("{0}")]
    BatchBudget(String),
    /// A folder, path, version, manifest or chunk that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A commit names a manifest (or delta base) the server does not have.
    #[error("{0}")]
    UnknownManifest(String),
    /// A commit references chunks the server does not have.
    #[error(
        "the server lacks {} chunk(s) this manifest references (first: {}): upload them with PutChunks, then commit again",
        .0.len(), .0.first().map(|id| id.to_string()).unwrap_or_default()
    )]
    MissingChunks(Vec<ChunkId>),
    /// The request was based on a state that has changed since (the folder's keys moved to
    /// another generation): read again and retry.
    #[error("{0}")]
    Aborted(String),
    /// The folder is not in a state that allows the request (an encrypted folder's restore, a
    /// folder with entries in the clear made encrypted).
    #[error("{0}")]
    Precondition(String),
    /// A Changes cursor past the journal's head.
    #[error(
        "cursor {cursor} is past the folder's journal head {head}: the server's store was replaced or \
         restored; resync from cursor 0"
    )]
    CursorAhead {
        /// The cursor asked for.
        cursor: u64,
        /// The head.
        head: u64,
    },
    /// The chunk store failed or found damage.
    #[error(transparent)]
    Store(#[from] lbsync_chunkstore::Error),
    /// The metadata database failed.
    #[error("metadata database error: {0}")]
    Sled(#[from] sled::Error),
    /// The metadata database (PostgreSQL) cannot be reached or failed a query: the message says
    /// which server (never its password) and what to check.
    #[error("{0}")]
    Database(String),
    /// Stored metadata does not decode.
    #[error("stored metadata is damaged: {0}; run `lbsync-server fsck`")]
    Metadata(String),
    /// Serving failed (binding, TLS setup, transport).
    #[error("cannot serve: {0}")]
    Serve(String),
    /// The server is shutting down.
    #[error("the server is shutting down: retry in a moment")]
    ShuttingDown,
}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl From<lbsync_proto::ConvertError> for Error {
    fn from(e: lbsync_proto::ConvertError) -> Self {
        Error::BadRequest(e.to_string())
    }
}

impl From<lbsync_proto::PathError> for Error {
    fn from(e: lbsync_proto::PathError) -> Self {
        Error::BadRequest(e.to_string())
    }
}

/// Whether the store or the metadata ran out of disk space somewhere down the error chain.
fn is_disk_full(e: &Error) -> bool {
    let full = |io: &std::io::Error| {
        io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
    };
    if let Error::Sled(sled::Error::Io(io)) = e {
        return full(io);
    }
    // The chunk store wraps sled's errors, and sled's errors name no source: look inside both.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>().is_some_and(full) {
            return true;
        }
        if let Some(sled::Error::Io(io)) = s.downcast_ref::<sled::Error>() {
            return full(io);
        }
        source = s.source();
    }
    false
}

/// The gRPC status for an error. The one place errors become statuses.
pub fn status(e: &Error) -> Status {
    let code = match e {
        Error::BadRequest(_) | Error::BatchBudget(_) => Code::InvalidArgument,
        Error::NotFound(_) | Error::UnknownManifest(_) => Code::NotFound,
        Error::MissingChunks(_) | Error::Precondition(_) => Code::FailedPrecondition,
        Error::Aborted(_) => Code::Aborted,
        Error::CursorAhead { .. } => Code::OutOfRange,
        Error::ShuttingDown => Code::Unavailable,
        Error::Store(lbsync_chunkstore::Error::HashMismatch { .. })
        | Error::Store(lbsync_chunkstore::Error::BadManifest(_))
        | Error::Store(lbsync_chunkstore::Error::BadId(_)) => Code::InvalidArgument,
        Error::Store(_) | Error::Sled(_) if is_disk_full(e) => {
            tracing::error!("the disk is full: {}", chain(e));
            return store_failure(Status::resource_exhausted(
                "the server's disk is full: nothing was committed; free space on the server (and restart \
                 lbsync-server if this persists once there is space), then sync again",
            ));
        }
        Error::Database(_) => {
            // The client retries, a load balancer routes around this server (health).
            tracing::error!("{}", chain(e));
            return store_failure(Status::unavailable(e.to_string()));
        }
        Error::Store(lbsync_chunkstore::Error::Io { .. })
        | Error::Store(lbsync_chunkstore::Error::Index(_))
        | Error::Sled(_) => {
            tracing::error!("internal error: {}", chain(e));
            return store_failure(Status::new(Code::Internal, e.to_string()));
        }
        Error::Store(_) | Error::Metadata(_) | Error::Serve(_) => {
            tracing::error!("internal error: {}", chain(e));
            Code::Internal
        }
    };
    let mut status = Status::new(code, e.to_string());
    if let Error::MissingChunks(ids) = e {
        // Headers are small: name the first ones; MissingChunks tells the rest.
        let bytes = lbsync_proto::ids_to_bytes(ids.iter().take(MISSING_IDS_IN_METADATA));
        status.metadata_mut().insert_bin(
            MISSING_IDS_KEY,
            tonic::metadata::MetadataValue::from_bytes(&bytes),
        );
    }
    status
}

/// Marks a status as a failure of the store itself, for health (see `metrics`, which takes the
/// mark off before the answer leaves).
fn store_failure(mut status: Status) -> Status {
    status.metadata_mut().insert(
        crate::metrics::STORE_FAILURE_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// At most this many missing ids travel in the metadata of a FAILED_PRECONDITION answer.
pub const MISSING_IDS_IN_METADATA: usize = 256;

/// Binary metadata key of a FAILED_PRECONDITION commit answer: the concatenated missing chunk ids
/// (the first [`MISSING_IDS_IN_METADATA`]).
pub const MISSING_IDS_KEY: &str = "lbsync-missing-ids-bin";

pub use lbsync_proto::error_chain as chain;
