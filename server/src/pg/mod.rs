//! Metadata in PostgreSQL (`--metadata postgres://…`): the [`crate::meta`] traits over one
//! database that several servers share.
//!
//! [`PgMeta::connect`] opens a pool of connections (the sync `postgres` client under `r2d2`;
//! the traits are synchronous and run on the service's blocking threads), brings the schema up
//! to date with the embedded migrations (`server/migrations/V*__*.sql`, run by refinery while
//! holding a session advisory lock, so servers starting at once migrate one after another), and
//! hands out [`PgMeta::folders`], [`PgMeta::users`] and [`PgMeta::scopes`]. [`listen`] carries
//! other servers' commits into this server's Changes streams.
//!
//! # Schema
//! Names, paths and ids are `text COLLATE "C"` (they sort as bytes, as sled's keys do).
//! - `folders (name PK, head, expired_seq, keys)`: the journal head (the last seq handed out),
//!   the expiry horizon (the highest seq of a tombstone forgotten), and for an end-to-end
//!   encrypted folder its wrapped keys (an encoded `lbsync.v1.FolderKeys`; NULL: plain);
//! - `entries (folder, path) PK, seq, version, deleted, committed_ns, entry`: a path's current
//!   entry, an encoded `lbsync.v1.Entry` (as sled stores it), with the columns queries need;
//!   unique index `(folder, seq)`. **This is the journal too**: sled keeps at most one journal
//!   record a path, its latest commit's, and that commit is the path's current entry, so the
//!   changes after a cursor are the entries with `seq > cursor` in seq order. `backlog` reads
//!   them and the head in one snapshot (repeatable read); `compact_journal` has nothing to do
//!   (it returns 0); `expire_tombstones` deleting an entry drops its journal record with it;
//! - `history (folder, path, version) PK, committed_ns, entry`: every retained version;
//! - `users (name PK)`, `tokens (id PK, hash, user_name, read_only, folder, created_ns)` with
//!   the BLAKE3 of the token's secret, never the secret; `owners (folder PK, user_name)`,
//!   `members (folder, user_name) PK, read_only`;
//! - `scopes (folder, kind, id) PK`: kind 0 a chunk id, 1 a manifest id;
//! - `chunks (id PK, pack, pack_offset, stored_len, raw_len, inserted_ms)`: the chunk index of
//!   packs on an object store (feature `s3`, `PgMeta::chunk_index`).
//!
//! # A commit
//! A batch goes in SQL transactions of up to [`crate::folders::GROUP_TXN_COMMITS`] commits. Each
//! locks the folder's row (`SELECT … FOR UPDATE`), so the commits of every server to one folder
//! are ordered and their seqs dense; checks the folder's encryption against what the entries
//! were checked for ([`crate::meta::made_encrypted`]); reads the current entries of the group's
//! paths in one query (`path = ANY($2)`); decides each commit with [`crate::meta::decide`] (a
//! path twice in a group sees its first commit); upserts the entries and inserts the history
//! rows (one statement each, over `UNNEST` arrays); sets the head; and calls
//! `pg_notify('lbsync_commits', 'FOLDER HEAD')`, which PostgreSQL delivers when the transaction
//! commits. Every session runs with `synchronous_commit = on`: a commit is acknowledged once
//! PostgreSQL has it on disk, and no reader sees it before (what a reader returns cannot be taken
//! back by a crash).
//!
//! # Errors
//! Failures become [`crate::Error::Database`] (gRPC `unavailable`), naming the server as
//! `HOST:PORT/DATABASE` and what to check; a password in the URL never appears in a message or
//! a log line.

mod folders;
#[cfg(feature = "s3")]
mod index;
mod listen;
mod lock;
mod schema;
mod scopes;
mod users;

use std::sync::Arc;
use std::time::Duration;

use postgres::NoTls;
use postgres::config::Host;

use crate::error::{Error, Result};
use crate::meta::{Folders, Scopes, Users};

pub use folders::PgFolders;
#[cfg(feature = "s3")]
pub use index::PgChunkIndex;
pub use listen::{CHANNEL, listen};
pub use lock::{GC_LOCK, STORE_CREATE_LOCK, gc_running};
pub use scopes::PgScopes;
pub use users::PgUsers;

/// Most connections one server keeps to PostgreSQL.
pub const POOL_SIZE: u32 = 16;
/// How long a connection attempt, or a wait for a free pooled connection, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive idle time: a PostgreSQL that vanished without closing is noticed within a minute
/// or so, not the system default of two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

type Manager = r2d2_postgres::PostgresConnectionManager<NoTls>;
type Conn = r2d2::PooledConnection<Manager>;

/// The pool and a printable name of the server it reaches, shared by the three backends.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Arc<Pool>,
    /// `HOST:PORT/DATABASE`, without user or password.
    target: Arc<str>,
}

/// The pool, closed off any async task: each sync `postgres` connection runs a tokio runtime of
/// its own, and dropping a runtime on an async task panics. The service may well drop its last
/// handle there (at shutdown), so the pool goes to a thread of its own then.
struct Pool(Option<r2d2::Pool<Manager>>);

impl std::ops::Deref for Pool {
    type Target = r2d2::Pool<Manager>;

    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .expect("the pool is taken only when dropped")
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let Some(pool) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            let closing = std::thread::Builder::new()
                .name("lbsync-pg-close".into())
                .spawn(move || drop(pool));
            if let Err(e) = closing {
                tracing::warn!("cannot close the PostgreSQL connections on a thread: {e}");
            }
        }
    }
}

impl Db {
    /// A pooled connection.
    fn conn(&self) -> Result<Conn> {
        self.pool.get().map_err(|e| {
            Error::Database(format!(
                "cannot reach PostgreSQL at {} ({e}): is it running? check --metadata / \
                 LBSYNC_METADATA",
                self.target
            ))
        })
    }

    /// The error of a failed statement: `what` says what was being done.
    fn fail(&self, what: &str) -> impl Fn(postgres::Error) -> Error {
        move |e| {
            Error::Database(format!(
                "PostgreSQL at {}: {what} failed: {}",
                self.target,
                describe(&e)
            ))
        }
    }
}

/// Folders, users and scopes in one PostgreSQL database.
#[derive(Clone)]
pub struct PgMeta {
    /// For the chunk index.
    #[cfg(feature = "s3")]
    db: Db,
    folders: Arc<PgFolders>,
    users: Arc<PgUsers>,
    scopes: Arc<PgScopes>,
}

impl std::fmt::Debug for PgMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMeta")
            .field("target", &self.folders.db().target)
            .finish_non_exhaustive()
    }
}

impl PgMeta {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`, or
    /// libpq's `key=value` form), migrates its schema to this version (one server at a time)
    /// and keeps a pool of up to [`POOL_SIZE`] connections.
    ///
    /// Blocking: call it from a blocking thread (`spawn_blocking`) or before the runtime, not
    /// on an async task.
    pub fn connect(url: &str) -> Result<Self> {
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            Error::Database(format!(
                "the metadata URL {} does not parse ({}): use \
                 postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE in --metadata / LBSYNC_METADATA",
                redact(url),
                scrub(&describe(&e), url)
            ))
        })?;
        tune(&mut config);
        let target: Arc<str> =
            describe_target(config.get_hosts(), config.get_ports(), config.get_dbname()).into();
        let mut client = config
            .connect(NoTls)
            .map_err(|e| connect_error(&target, &e))?;
        schema::migrate(&mut client, &target)?;
        drop(client);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            .build(Manager::new(config, NoTls))
            .map_err(|e| {
                Error::Database(format!(
                    "cannot open a pool of connections to PostgreSQL at {target} ({e}): is it \
                     running? check --metadata / LBSYNC_METADATA"
                ))
            })?;
        let db = Db {
            pool: Arc::new(Pool(Some(pool))),
            target,
        };
        Ok(Self {
            folders: Arc::new(PgFolders::new(db.clone())),
            users: Arc::new(PgUsers::new(db.clone())),
            scopes: Arc::new(PgScopes::new(db.clone())),
            #[cfg(feature = "s3")]
            db,
        })
    }

    /// The folders, for the service.
    pub fn folders(&self) -> Folders {
        self.folders.clone()
    }

    /// The users, for the service.
    pub fn users(&self) -> Users {
        self.users.clone()
    }

    /// The dedup scopes, for the service.
    pub fn scopes(&self) -> Scopes {
        self.scopes.clone()
    }

    /// The chunk index of an object store whose metadata is here (table `chunks`).
    #[cfg(feature = "s3")]
    pub fn chunk_index(&self) -> Arc<dyn lbsync_objstore::ChunkIndex> {
        Arc::new(PgChunkIndex::new(self.db.clone()))
    }
}

/// What every session of ours runs with: durable commits, a name in `pg_stat_activity`,
/// bounded connection attempts and keepalives.
fn tune(config: &mut postgres::Config) {
    let options = format!(
        "{} -c synchronous_commit=on",
        config.get_options().unwrap_or("")
    );
    config.options(options.trim_start());
    if config.get_application_name().is_none() {
        config.application_name("lbsync-server");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE);
}

/// `HOST:PORT/DATABASE` of a config's hosts, ports and database, for messages (no user, no
/// password).
pub(crate) fn describe_target(hosts: &[Host], ports: &[u16], dbname: Option<&str>) -> String {
    let hosts: Vec<String> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    match dbname {
        Some(db) => format!("{hosts}/{db}"),
        None => hosts,
    }
}

/// A failed connection as a message that says what to check.
fn connect_error(target: &str, e: &postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        return Error::Database(format!(
            "PostgreSQL at {target} refused the connection ({}): check the user, password and \
             database in --metadata / LBSYNC_METADATA",
            db.message()
        ));
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut cause = describe(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            cause = io.kind().to_string();
            break;
        }
        source = s.source();
    }
    Error::Database(format!(
        "cannot reach PostgreSQL at {target} ({cause}): is it running? check --metadata / \
         LBSYNC_METADATA"
    ))
}

/// A postgres error in one line: the server's message and SQLSTATE, or the error chain.
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => crate::error::chain(e),
    }
}

/// A connection URL fit to print: the password (in the user info or a `password=` parameter)
/// replaced by `***`; a `key=value` string is not shown at all.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a key=value connection string)".to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user, hosts)) => match user.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => format!("{user}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `message` with every part of `url` that could be a password taken out.
fn scrub(message: &str, url: &str) -> String {
    let redacted = redact(url);
    let mut out = message.replace(url, &redacted);
    // The password on its own, however it was quoted in the message.
    if let Some((_, rest)) = url.split_once("://")
        && let Some((user, _)) = rest.rsplit_once('@')
        && let Some((_, password)) = user.split_once(':')
        && !password.is_empty()
    {
        out = out.replace(password, "***");
    }
    for kv in url.split(['?', '&', ' ']) {
        if let Some((k, v)) = kv.split_once('=')
            && k.eq_ignore_ascii_case("password")
            && !v.is_empty()
        {
            out = out.replace(v, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_print_without_their_password() {
        assert_eq!(
            redact("postgres://lb:s3cret@db.example:5433/meta?sslmode=disable&password=x"),
            "postgres://lb:***@db.example:5433/meta?sslmode=disable&password=***"
        );
        assert_eq!(
            redact("postgres://lb@h/meta"),
            "postgres://lb@h/meta",
            "nothing to hide"
        );
        assert_eq!(
            redact("host=h password=s3cret"),
            "(a key=value connection string)"
        );
        assert_eq!(
            scrub(
                "bad 's3cret' in postgres://lb:s3cret@h/x",
                "postgres://lb:s3cret@h/x"
            ),
            "bad '***' in postgres://lb:***@h/x"
        );
    }

    #[test]
    fn a_server_that_is_not_there_is_named_without_the_password() {
        // Port 1 on loopback: nothing listens there.
        let err = PgMeta::connect("postgres://lb:s3cret@127.0.0.1:1/meta").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot reach PostgreSQL at 127.0.0.1:1/meta (connection refused)"),
            "{msg}"
        );
        assert!(msg.contains("LBSYNC_METADATA"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        let err = PgMeta::connect("postgres://lb:s3cret@127.0.0.1:notaport/meta").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("does not parse"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }
}
