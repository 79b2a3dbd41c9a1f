//! Errors of the client.
//!
//! Policy: a message says what failed and what to do. Per-file trouble that a later sync fixes (a
//! file still being written) is not an error: it is reported and the sync exits non-zero.

use std::path::PathBuf;

/// The result type of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a sync can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be reached.
    #[error(
        "cannot reach the server at {url}: {reason}; check the URL (--server) and that lbsync-server runs there"
    )]
    Connect {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// TLS to the server failed for a reason a person must fix (an untrusted certificate, a
    /// pin that does not match, a port that does not speak TLS).
    #[error("cannot talk TLS with the server at {url}: {reason}")]
    Tls {
        /// The server URL.
        url: String,
        /// What went wrong, and what to do.
        reason: String,
    },
    /// The server URL does not parse.
    #[error(
        "bad server URL {0:?}: expected something like http://127.0.0.1:7700 or https://sync.example.org:7700, several separated by commas"
    )]
    BadUrl(String),
    /// An RPC failed.
    #[error("the server answered {code:?} to {what}: {message}")]
    Rpc {
        /// Which call.
        what: &'static str,
        /// The gRPC code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// The server does not accept the token (missing, unknown, revoked) or refuses it this
    /// folder or this change: nothing was changed there, and retrying does not help.
    #[error(
        "the server refused access ({what}): {message}; {}",
        if *code == tonic::Code::Unauthenticated {
            "the token is not accepted, so nothing more is synced until it is replaced"
        } else {
            "the token may not do that, so nothing more is synced until that changes"
        }
    )]
    Denied {
        /// Which call.
        what: &'static str,
        /// `Unauthenticated` or `PermissionDenied`.
        code: tonic::Code,
        /// The server's message: what was wrong and what to do.
        message: String,
    },
    /// The server refused one commit of a batch, for the reason it gives.
    #[error("the server refused to {what}: {reason}")]
    Refused {
        /// What was asked ("delete notes.txt").
        what: String,
        /// The server's reason.
        reason: String,
    },
    /// The server sent something malformed.
    #[error("the server sent a malformed answer to {what}: {reason}")]
    Protocol {
        /// Which call.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, on which path.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The state in DIR/.lbsync is unusable.
    #[error(
        "sync state {path} is unusable: {reason}; move it away to start over (local files are kept)"
    )]
    State {
        /// The state file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Chunking or a manifest failed.
    #[error(transparent)]
    Chunks(#[from] lbsync_chunkstore::Error),
    /// The directory is not usable.
    #[error("{0}")]
    Usage(String),
    /// The folder is not there as it was synced (moved, unplugged, replaced, marker gone):
    /// nothing is sent or deleted until it is back.
    #[error(
        "{} is stopped: {reason}; nothing is synced until it is back as it was (put it back, or \
         sync a new directory)",
        root.display()
    )]
    FolderStopped {
        /// The synced directory.
        root: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another client holds the folder's lock.
    #[error(
        "{} is being synced by another lbsync-client (pid {pid}): stop it first, or let it do \
         the work",
        root.display()
    )]
    Busy {
        /// The synced directory.
        root: PathBuf,
        /// The other process, as it wrote itself in the lock file.
        pid: String,
    },
    /// A path cannot be written or read without leaving the folder.
    #[error("{path}: {reason}; it is not synced until that is fixed")]
    Confined {
        /// The path inside the folder.
        path: String,
        /// What is in the way.
        reason: String,
    },
    /// Something the server sent for an encrypted folder that its key did not seal: a damaged
    /// or hostile server. Nothing of it is applied.
    #[error("{0}")]
    Tampered(String),
    /// Setting up or using an encrypted folder's key failed.
    #[error("{0}")]
    Key(String),
    /// Sealing or opening with the folder key failed.
    #[error(transparent)]
    Crypt(#[from] lbsync_crypt::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn rpc(what: &'static str) -> impl FnOnce(tonic::Status) -> Error {
        move |s| match s.code() {
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Error::Denied {
                what,
                code: s.code(),
                message: s.message().to_owned(),
            },
            code => Error::Rpc {
                what,
                code,
                message: s.message().to_owned(),
            },
        }
    }

    /// True when the server refuses this client's token or access: stop, do not retry.
    pub fn is_denied(&self) -> bool {
        matches!(self, Error::Denied { .. })
    }

    pub(crate) fn protocol<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Protocol {
            what,
            reason: e.to_string(),
        }
    }

    /// True when the server is unreachable or went away: worth retrying later (offline).
    pub fn is_offline(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Rpc { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            ),
            _ => false,
        }
    }
}
