//! Errors of the crypt crate.
//!
//! Policy: an error says what was wrong and what to do. Anything that fails authentication is
//! [`Error::Tampered`]: the bytes did not come from a holder of the folder key, whoever sent them.
//! Nothing here logs or prints key material, sealed metadata or plaintext.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not open the folder key.
    #[error(
        "wrong passphrase: it does not open this folder's key; try again (check the keyboard layout)"
    )]
    WrongPassphrase,
    /// The identity is not one the folder key was shared with.
    #[error(
        "this identity cannot open the folder key: the folder was not shared with it; ask someone \
         who has the folder to run share-key with this identity's recipient"
    )]
    NotThisFolder,
    /// A chunk, an entry or a path failed authentication.
    #[error(
        "{what}: the server sent data that was not written by a holder of this folder's key \
         (tampered with, damaged, or from another folder); it was not used"
    )]
    Tampered {
        /// What failed, and where.
        what: String,
    },
    /// A folder key file, a wrapped key or an identity file is not what it should be.
    #[error("bad key file: {why}")]
    BadKeyFile {
        /// What is wrong with it.
        why: String,
    },
    /// A path is too long once sealed.
    #[error(
        "path too long for an encrypted folder: sealed it is {len} bytes, the limit is 4096; \
         shorten it (the file is not synced until then)"
    )]
    PathTooLong {
        /// The sealed path's length in bytes.
        len: usize,
    },
    /// An argument is not acceptable (what is wrong is said).
    #[error("{0}")]
    BadInput(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn tampered(what: impl Into<String>) -> Error {
    Error::Tampered { what: what.into() }
}
