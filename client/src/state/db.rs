//! `.lbsync/state.db`: the client's state in SQLite (WAL mode).
//!
//! Three tables: `header` (one row: the folder's settings and cursor as JSON, a few hundred
//! bytes), `files` (one row a synced path, its fingerprint in integer columns, which SQLite
//! stores as varints) and `manifests` (the manifests of synced files, keyed by id). A save is
//! one transaction that writes the header and only the rows that changed, so its cost follows
//! the change, not the tree. WAL lets `status`, `restore` and the watcher's own checks read the
//! state while a sync writes it; a crash leaves the last committed save.
//!
//! SQLite stores integers as i64: the u64 columns (sizes, inodes, devices, versions, seqs) go
//! through `as i64` and back, which keeps every bit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lbsync_chunkstore::ManifestId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{Fingerprint, Kind, Synced};
use crate::error::{Error, Result};

/// The database's file name in `.lbsync/`.
pub const DB_FILE: &str = "state.db";

/// `PRAGMA user_version` of the schema below.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS header (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        json BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS files (
        path TEXT PRIMARY KEY NOT NULL,
        version INTEGER NOT NULL,
        manifest BLOB,
        kind INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        mode INTEGER NOT NULL,
        target TEXT,
        ctime_ns INTEGER NOT NULL,
        dev INTEGER NOT NULL,
        seen_ns INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        committed_ns INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS manifests (
        id BLOB PRIMARY KEY NOT NULL,
        bytes BLOB NOT NULL
    ) WITHOUT ROWID;
";

const FILE_COLUMNS: &str = "path, version, manifest, kind, size, mtime_ns, inode, mode, target, \
                            ctime_ns, dev, seen_ns, seq, committed_ns";

/// An open state database.
pub struct StateDb {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// What one save writes.
pub struct Save<'a> {
    /// The header's JSON.
    pub header: &'a [u8],
    /// Paths whose record changed, with the record now (`None`: removed).
    pub files: Vec<(&'a str, Option<&'a Synced>)>,
    /// Manifests cached since the last save, encoded.
    pub manifests: &'a std::collections::HashMap<ManifestId, Vec<u8>>,
}

impl StateDb {
    /// Opens (creating it if needed) the database in `dir`. A symlink in its place is refused.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, OpenFlags::SQLITE_OPEN_CREATE)
    }

    /// Opens the database in `dir` if there is one (`None`: there is not).
    pub fn open_existing(dir: &Path) -> Result<Option<Self>> {
        if std::fs::symlink_metadata(dir.join(DB_FILE)).is_err() {
            return Ok(None);
        }
        Self::open_with(dir, OpenFlags::empty()).map(Some)
    }

    fn open_with(dir: &Path, create: OpenFlags) -> Result<Self> {
        let path = dir.join(DB_FILE);
        // Another process (a `status` beside a `watch`) may hold the write lock for a moment.
        // FULL: a committed save survives a power cut, as the fsync'd state.json did. The page
        // cache stays small (4 MiB).
        let conn = connect(
            &path,
            create,
            std::time::Duration::from_secs(10),
            "FULL",
            4096,
        )
        .map_err(unusable(&path))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(unusable(&path))?;
        if version > SCHEMA_VERSION {
            return Err(Error::State {
                path,
                reason: format!(
                    "its schema version {version} is newer than this lbsync-client's \
                     {SCHEMA_VERSION}; run the newer lbsync-client that wrote it"
                ),
            });
        }
        if version < SCHEMA_VERSION {
            conn.execute_batch(SCHEMA)
                .and_then(|()| conn.pragma_update(None, "user_version", SCHEMA_VERSION))
                .map_err(unusable(&path))?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while the lock was held leaves SQLite consistent (a transaction not
        // committed is rolled back when dropped).
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unusable(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        unusable(&self.path)
    }

    /// The header's JSON, if a state was ever saved here.
    pub fn header(&self) -> Result<Option<Vec<u8>>> {
        self.conn()
            .query_row("SELECT json FROM header WHERE id = 0", [], |r| r.get(0))
            .optional()
            .map_err(self.unusable())
    }

    /// Every path's record.
    pub fn files(&self) -> Result<BTreeMap<String, Synced>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT {FILE_COLUMNS} FROM files"))
            .map_err(self.unusable())?;
        let rows = stmt.query_map([], read_file).map_err(self.unusable())?;
        let mut files = BTreeMap::new();
        for row in rows {
            let (path, synced) = row.map_err(self.unusable())?;
            files.insert(path, synced);
        }
        Ok(files)
    }

    /// Writes one save in one transaction.
    pub fn save(&self, save: &Save<'_>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.unusable())?;
        {
            tx.execute(
                "INSERT INTO header (id, json) VALUES (0, ?1)
                 ON CONFLICT (id) DO UPDATE SET json = excluded.json",
                [save.header],
            )
            .map_err(self.unusable())?;
            let mut upsert = tx
                .prepare_cached(&format!(
                    "INSERT OR REPLACE INTO files ({FILE_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                ))
                .map_err(self.unusable())?;
            let mut delete = tx
                .prepare_cached("DELETE FROM files WHERE path = ?1")
                .map_err(self.unusable())?;
            for (path, record) in &save.files {
                match record {
                    Some(s) => {
                        let l = &s.local;
                        let manifest = s.manifest_id().map(|m| m.as_bytes().to_vec());
                        upsert
                            .execute(params![
                                path,
                                s.version as i64,
                                manifest,
                                kind_code(l.kind),
                                l.size as i64,
                                l.mtime_ns,
                                l.inode as i64,
                                l.mode,
                                l.target,
                                l.ctime_ns,
                                l.dev as i64,
                                s.seen_ns,
                                s.seq as i64,
                                s.committed_ns,
                            ])
                            .map_err(self.unusable())?;
                    }
                    None => {
                        delete.execute([path]).map_err(self.unusable())?;
                    }
                }
            }
            let mut put = tx
                .prepare_cached("INSERT OR IGNORE INTO manifests (id, bytes) VALUES (?1, ?2)")
                .map_err(self.unusable())?;
            for (id, bytes) in save.manifests {
                put.execute(params![&id.as_bytes()[..], bytes])
                    .map_err(self.unusable())?;
            }
        }
        tx.commit().map_err(self.unusable())
    }

    /// A cached manifest's encoded bytes.
    pub fn manifest(&self, id: &ManifestId) -> Option<Vec<u8>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT bytes FROM manifests WHERE id = ?1")
            .ok()?;
        stmt.query_row([&id.as_bytes()[..]], |r| r.get(0))
            .optional()
            .ok()
            .flatten()
    }

    /// Calls `f` with each synced file's path and its manifest's encoded bytes, in one scan.
    pub fn each_file_manifest(&self, mut f: impl FnMut(&str, &[u8])) -> Result<()> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT files.path, manifests.bytes FROM files
                 JOIN manifests ON manifests.id = files.manifest",
            )
            .map_err(self.unusable())?;
        let mut rows = stmt.query([]).map_err(self.unusable())?;
        while let Some(row) = rows.next().map_err(self.unusable())? {
            let path = row.get_ref(0).and_then(|v| Ok(v.as_str()?.to_owned()));
            let bytes = row.get_ref(1).and_then(|v| Ok(v.as_blob()?));
            if let (Ok(path), Ok(bytes)) = (path, bytes) {
                f(&path, bytes);
            }
        }
        Ok(())
    }

    /// Deletes the manifests no synced file names; returns how many went.
    pub fn prune_manifests(&self) -> Result<usize> {
        self.conn()
            .execute(
                "DELETE FROM manifests WHERE id NOT IN
                 (SELECT manifest FROM files WHERE manifest IS NOT NULL)",
                [],
            )
            .map_err(self.unusable())
    }
}

/// A connection to the database at `path` (created if `create` holds `SQLITE_OPEN_CREATE`; a
/// symlink in its place is refused), in WAL mode so that readers never wait for the writer, with
/// `synchronous` and a page cache of `cache_kib` KiB. The state and the chunk cache both open
/// theirs here.
pub(crate) fn connect(
    path: &Path,
    create: OpenFlags,
    busy: std::time::Duration,
    synchronous: &str,
    cache_kib: i64,
) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | create
        | OpenFlags::SQLITE_OPEN_NOFOLLOW
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    Ok(conn)
}

/// The error for a state database SQLite refused.
fn unusable(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn kind_code(kind: Kind) -> i64 {
    match kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
    }
}

fn read_file(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Synced)> {
    let kind = match r.get::<_, i64>(3)? {
        0 => Kind::File,
        1 => Kind::Dir,
        2 => Kind::Symlink,
        n => {
            return Err(rusqlite::Error::IntegralValueOutOfRange(3, n));
        }
    };
    let manifest: Option<Vec<u8>> = r.get(2)?;
    let manifest = match manifest {
        None => None,
        Some(bytes) => Some(
            ManifestId::from_slice(&bytes)
                .ok_or(rusqlite::Error::InvalidColumnType(
                    2,
                    "manifest".into(),
                    rusqlite::types::Type::Blob,
                ))?
                .to_string(),
        ),
    };
    let synced = Synced {
        version: r.get::<_, i64>(1)? as u64,
        manifest,
        local: Fingerprint {
            kind,
            size: r.get::<_, i64>(4)? as u64,
            mtime_ns: r.get(5)?,
            inode: r.get::<_, i64>(6)? as u64,
            mode: r.get(7)?,
            target: r.get(8)?,
            ctime_ns: r.get(9)?,
            dev: r.get::<_, i64>(10)? as u64,
        },
        seen_ns: r.get(11)?,
        seq: r.get::<_, i64>(12)? as u64,
        committed_ns: r.get(13)?,
    };
    Ok((r.get(0)?, synced))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64, manifest: Option<ManifestId>) -> Synced {
        Synced {
            version,
            manifest: manifest.map(|m| m.to_string()),
            local: Fingerprint {
                kind: Kind::File,
                size: u64::MAX,
                mtime_ns: -5,
                inode: u64::MAX - 1,
                mode: 0o755,
                target: Some("t".into()),
                ctime_ns: i64::MAX,
                dev: 1 << 63,
            },
            seen_ns: 7,
            seq: u64::MAX,
            committed_ns: -1,
        }
    }

    #[test]
    fn rows_round_trip_every_bit_and_saves_write_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        assert_eq!(db.header().unwrap(), None);
        let m = lbsync_chunkstore::Manifest::empty();
        let (a, b) = (record(1, Some(m.id())), record(2, None));
        db.save(&Save {
            header: b"{}",
            files: vec![("a", Some(&a)), ("b", Some(&b))],
            manifests: &[(m.id(), m.encode())].into(),
        })
        .unwrap();
        drop(db);
        let db = StateDb::open(dir.path()).unwrap();
        assert_eq!(db.header().unwrap().as_deref(), Some(&b"{}"[..]));
        let files = db.files().unwrap();
        assert_eq!(files["a"], a);
        assert_eq!(files["b"], b);
        assert_eq!(db.manifest(&m.id()), Some(m.encode()));

        // Removing `a` leaves `b`, and its manifest is pruned once no file names it.
        db.save(&Save {
            header: b"{\"x\":1}",
            files: vec![("a", None)],
            manifests: &Default::default(),
        })
        .unwrap();
        let files = db.files().unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(db.prune_manifests().unwrap(), 1);
        assert_eq!(db.manifest(&m.id()), None);
    }

    #[test]
    fn a_second_connection_reads_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let writer = StateDb::open(dir.path()).unwrap();
        writer
            .save(&Save {
                header: b"{}",
                files: vec![],
                manifests: &Default::default(),
            })
            .unwrap();
        let reader = StateDb::open(dir.path()).unwrap();
        assert!(reader.header().unwrap().is_some());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![b'x'; 4096]).unwrap();
        let err = StateDb::open(dir.path())
            .and_then(|db| db.header())
            .expect_err("refused")
            .to_string();
        assert!(err.contains("state.db is unusable"), "{err}");
    }
}
