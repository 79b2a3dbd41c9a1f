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
    /// The PostgreSQL metadata of a shared backend (its locks: one `gc` at a time).
    pub pg: Option<crate::pg::PgMeta>,
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
            pg: None,
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

/// The shortest grace period a new shared store's collections may use, unless `init
/// --min-grace` says otherwise.
#[cfg(feature = "s3")]
pub use lbsync_objstore::DEFAULT_MIN_GRACE;
/// The shortest grace period a new shared store's collections may use (no shared stores in this
/// build).
#[cfg(not(feature = "s3"))]
pub const DEFAULT_MIN_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether `--store` names an object store (a shared store, with `--metadata`) rather than a
/// directory.
pub fn is_object_store_url(store: &str) -> bool {
    ["s3://", "file://", "memory://"]
        .iter()
        .any(|scheme| store.starts_with(scheme))
}

#[cfg(feature = "s3")]
impl Backend {
    /// A store that several servers share: packs on the object store at `store` (an
    /// `s3://BUCKET/PREFIX?…` URL; credentials from the AWS environment), metadata and the chunk
    /// index in PostgreSQL at `metadata`. With `create`, a store is made at `store` if there is
    /// none (under a PostgreSQL lock, so that servers starting at once on an empty prefix agree
    /// on one store id).
    pub fn shared(store: &str, metadata: &str, create: bool) -> Result<Self> {
        Self::shared_with(store, metadata, create.then_some(DEFAULT_MIN_GRACE))
    }

    /// [`Backend::shared`]; a store made here (`create` set) records `create` as the shortest
    /// grace period its collections may use.
    pub fn shared_with(
        store: &str,
        metadata: &str,
        create: Option<std::time::Duration>,
    ) -> Result<Self> {
        use lbsync_chunkstore::ChunkParams;
        use lbsync_objstore::{ObjectChunkStore, StoreOptions};

        let pg = crate::pg::PgMeta::connect(metadata)?;
        let index = pg.chunk_index();
        let chunks = pg.exclusive(crate::pg::STORE_CREATE_LOCK, || {
            ObjectChunkStore::open_url(
                store,
                index,
                create.map(|_| ChunkParams::default()),
                StoreOptions {
                    min_grace: create.unwrap_or(DEFAULT_MIN_GRACE),
                    ..StoreOptions::default()
                },
            )
            .map_err(|e| Error::Serve(format!("cannot open the store at {store}: {e}")))
        })?;
        Ok(Self {
            store_id: chunks.store_id().to_owned(),
            describe: format!(
                "{} with metadata in {}",
                chunks.url(),
                crate::pg::redact(metadata)
            ),
            chunks: Arc::new(chunks),
            folders: pg.folders(),
            users: pg.users(),
            scopes: pg.scopes(),
            local: None,
            pg: Some(pg),
            listen: Some(metadata.to_owned()),
        })
    }
}

#[cfg(not(feature = "s3"))]
impl Backend {
    /// A store on an object store needs the `s3` feature, which this build left out.
    pub fn shared(store: &str, metadata: &str, create: bool) -> Result<Self> {
        Self::shared_with(store, metadata, create.then_some(DEFAULT_MIN_GRACE))
    }

    /// A store on an object store needs the `s3` feature, which this build left out.
    pub fn shared_with(
        store: &str,
        _metadata: &str,
        _create: Option<std::time::Duration>,
    ) -> Result<Self> {
        Err(Error::Serve(format!(
            "this lbsync-server was built without object store support, so it cannot serve \
             {store}: build it with `--features s3` (a default feature)"
        )))
    }
}

impl TryFrom<PackStore> for Backend {
    type Error = Error;

    fn try_from(store: PackStore) -> Result<Self> {
        Self::local(store)
    }
}
