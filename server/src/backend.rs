//! Where a server keeps what it serves: chunk bytes in a [`ChunkStore`] and metadata behind the
//! [`crate::meta`] traits.
//!
//! The embedded default, [`Backend::local`], is one directory (`--store DIR`): packs and their
//! sled index, with the folders, users and scopes in the same sled database. Only one server
//! process can open it. A shared backend (packs on an object store, metadata in PostgreSQL) may
//! be served by several processes at once; each hears the others' commits through
//! [`Backend::listen`].

use std::sync::Arc;

use lbsync_chunkstore::{ChunkStore, PackStore};

use crate::error::{Error, Result};
use crate::folders::SledFolders;
use crate::meta::{Folders, Scopes, Users};
use crate::scope::SledScopes;
use crate::users::SledUsers;

/// A server's chunks and metadata; clones share them.
#[derive(Clone)]
pub struct Backend {
    /// The chunk bytes.
    pub chunks: Arc<dyn ChunkStore>,
    /// The store's id, which clients remember so that they notice a store replaced under them.
    pub store_id: String,
    /// Folders: entries, history, journal.
    pub folders: Folders,
    /// Users, tokens, owners and members.
    pub users: Users,
    /// Per-folder dedup scopes.
    pub scopes: Scopes,
    /// The embedded store, when the backend is one (its directory holds the pid file, the admin
    /// socket and the TLS certificate).
    pub local: Option<PackStore>,
    /// A PostgreSQL URL whose `lbsync_commits` notifications tell of commits made through other
    /// servers sharing the metadata.
    pub listen: Option<String>,
    /// What the server names in its log ("/var/lbsync", "s3://… with postgres://…").
    pub describe: String,
}

impl Backend {
    /// The embedded store: everything in `store`'s directory.
    pub fn local(store: PackStore) -> Result<Self> {
        let folders: Folders = Arc::new(SledFolders::open(store.db())?);
        let scopes: Scopes = Arc::new(SledScopes::open(&store, folders.as_ref())?);
        let users: Users = Arc::new(SledUsers::open(store.db())?);
        Ok(Self {
            chunks: Arc::new(store.clone()),
            store_id: store.store_id().to_owned(),
            folders,
            users,
            scopes,
            describe: store.dir().display().to_string(),
            local: Some(store),
            listen: None,
        })
    }

    /// Makes what was written durable: the embedded store flushes its index (a shared backend's
    /// writes are durable when acknowledged).
    pub fn flush(&self) -> Result<()> {
        if let Some(store) = &self.local {
            store.flush()?;
        }
        Ok(())
    }
}

impl TryFrom<PackStore> for Backend {
    type Error = Error;

    fn try_from(store: PackStore) -> Result<Self> {
        Self::local(store)
    }
}

/// Hears the commits made through other servers sharing the metadata at `url` and sends each
/// one's (folder, seq) into `commits`, until `shutdown` turns true.
pub(crate) async fn listen(
    url: String,
    commits: tokio::sync::broadcast::Sender<(Arc<str>, u64)>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // MERGE-PG: replaced by crate::pg::listen when the PostgreSQL backend lands.
    let _ = (url, commits, shutdown);
}
