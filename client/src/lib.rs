//! lbsync's client: keeps a directory and a server folder in step, moving only chunks the other
//! side lacks.
//!
//! - [`Syncer`] runs one two-way reconciliation ([`engine`] explains the rules: what counts as a
//!   change, how conflicts keep both sides).
//! - [`state`]: `DIR/.lbsync/`, the per-path record of what was synced, written atomically.
//! - [`codec`]: how chunks, manifests and entries look on the server (plain, or sealed with an
//!   encrypted folder's key).
//! - [`cache`]: copies of small synced files' chunks, so an edit travels as a delta.
//! - [`local`]: scanning (with `.lbsyncignore`), fingerprints, the index of chunks local files hold.
//! - [`place`]: swapping a download into place and moving deletions aside, so a write that lands
//!   meanwhile is kept.
//! - [`remote`]: the server's RPCs with byte counts; [`tls`]: which server certificates it trusts.
//! - [`watch`](mod@watch): real-time sync (inotify + the server's change stream), offline queue, backoff.
//! - [`transfer`]: uploading a file's new chunks and committing it as a delta; downloading into a
//!   temp file and renaming it into place.
//! - [`keys`]: an encrypted folder's key: made, joined, re-wrapped, shared.
//! - [`undelete`]: undoing a deletion event by restoring the deleted paths' last versions.

pub mod cache;
pub mod codec;
pub mod confine;
pub mod conflict;
pub mod engine;
pub mod error;
pub mod keys;
pub mod local;
pub mod place;
pub mod plan;
pub(crate) mod prefetch;
pub mod readonly;
pub mod remote;
pub mod state;
pub mod tls;
pub mod transfer;
pub mod undelete;
pub mod watch;

pub use engine::{DEFAULT_SERVER, Report, SyncOptions, Syncer};
pub use error::{Error, Result};
pub use watch::{WatchOptions, watch};
