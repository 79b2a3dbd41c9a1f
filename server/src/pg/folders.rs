//! [`FolderMeta`] in PostgreSQL: see the module docs of [`crate::pg`] for the tables and what a
//! commit transaction does. Behaves as the sled backend ([`crate::folders`]) does, call for call.

use std::collections::HashMap;

use lbsync_proto::{CommitOutcome, Entry, SyncPath, pb};
use postgres::fallible_iterator::FallibleIterator;
use prost::Message;

use super::{Conn, Db};
use crate::error::{Error, Result};
use crate::folders::{
    Backlog, GROUP_TXN_COMMITS, JOURNAL_SCAN_LIMIT, check_folder_name, decode, decode_listed,
    encode, now_ns,
};
use crate::meta::{FolderMeta, decide, made_encrypted};

/// The folders of a PostgreSQL database.
pub struct PgFolders {
    db: Db,
}

/// A seq, version or count as PostgreSQL's `bigint` (ours never pass `i64::MAX`).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn no_folder(folder: &str) -> Error {
    Error::NotFound(format!("no folder {folder:?} on this server"))
}

/// What a group's commits write: the entries (each path's last) and every history row.
#[derive(Default)]
struct Writes {
    paths: Vec<String>,
    seqs: Vec<i64>,
    versions: Vec<i64>,
    deleted: Vec<bool>,
    times: Vec<i64>,
    entries: Vec<Vec<u8>>,
    h_paths: Vec<String>,
    h_versions: Vec<i64>,
    h_times: Vec<i64>,
    h_entries: Vec<Vec<u8>>,
}

impl PgFolders {
    pub(super) fn new(db: Db) -> Self {
        Self { db }
    }

    pub(super) fn db(&self) -> &Db {
        &self.db
    }

    fn head_on(&self, c: &mut impl postgres::GenericClient, folder: &str) -> Result<u64> {
        c.query_opt("SELECT head FROM folders WHERE name = $1", &[&folder])
            .map_err(self.db.fail("reading a folder's head"))?
            .map(|r| r.get::<_, i64>(0) as u64)
            .ok_or_else(|| no_folder(folder))
    }

    /// One transaction of a group commit: see the module docs of [`crate::pg`].
    fn commit_group(
        &self,
        c: &mut Conn,
        folder: &str,
        group: &[(Entry, u64)],
        encrypted: bool,
        now: i64,
    ) -> Result<Vec<CommitOutcome>> {
        let mut tx = c.transaction().map_err(self.db.fail("starting a commit"))?;
        let row = tx
            .query_opt(
                "SELECT head, keys IS NOT NULL FROM folders WHERE name = $1 FOR UPDATE",
                &[&folder],
            )
            .map_err(self.db.fail("locking a folder for a commit"))?
            .ok_or_else(|| no_folder(folder))?;
        let (mut head, is_encrypted) = (row.get::<_, i64>(0) as u64, row.get::<_, bool>(1));
        if is_encrypted != encrypted {
            // A folder only ever becomes encrypted. The transaction rolls back when dropped.
            return Err(made_encrypted(folder));
        }
        let paths: Vec<&str> = group.iter().map(|(e, _)| e.path.as_str()).collect();
        let mut current: HashMap<String, Entry> = HashMap::new();
        for row in tx
            .query(
                "SELECT path, entry FROM entries WHERE folder = $1 AND path = ANY($2)",
                &[&folder, &paths],
            )
            .map_err(
                self.db
                    .fail("reading the current entries of a commit's paths"),
            )?
        {
            current.insert(row.get(0), decode(row.get(1))?);
        }
        let mut out = Vec::with_capacity(group.len());
        let mut w = Writes::default();
        // Per path, its index in the entry columns: a path twice writes its last commit.
        let mut slot: HashMap<String, usize> = HashMap::new();
        for (entry, base_version) in group {
            let path = entry.path.as_str();
            let version = match decide(current.get(path), entry, *base_version, encrypted) {
                Ok(version) => version,
                Err(current) => {
                    out.push(CommitOutcome::Conflict(current));
                    continue;
                }
            };
            let mut new = entry.clone();
            new.committed_ns = now;
            new.version = version;
            head += 1;
            new.seq = head;
            let bytes = encode(&new);
            let at = *slot.entry(path.to_owned()).or_insert_with(|| {
                w.paths.push(path.to_owned());
                w.seqs.push(0);
                w.versions.push(0);
                w.deleted.push(false);
                w.times.push(0);
                w.entries.push(Vec::new());
                w.paths.len() - 1
            });
            (w.seqs[at], w.versions[at]) = (big(new.seq), big(new.version));
            (w.deleted[at], w.times[at]) = (new.deleted, now);
            w.entries[at] = bytes.clone();
            w.h_paths.push(path.to_owned());
            w.h_versions.push(big(new.version));
            w.h_times.push(now);
            w.h_entries.push(bytes);
            current.insert(path.to_owned(), new.clone());
            out.push(CommitOutcome::Committed(new));
        }
        if !w.paths.is_empty() {
            tx.execute(
                "INSERT INTO entries (folder, path, seq, version, deleted, committed_ns, entry) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::bool[], \
                 $6::int8[], $7::bytea[]) \
                 ON CONFLICT (folder, path) DO UPDATE SET seq = EXCLUDED.seq, \
                 version = EXCLUDED.version, deleted = EXCLUDED.deleted, \
                 committed_ns = EXCLUDED.committed_ns, entry = EXCLUDED.entry",
                &[
                    &folder,
                    &w.paths,
                    &w.seqs,
                    &w.versions,
                    &w.deleted,
                    &w.times,
                    &w.entries,
                ],
            )
            .map_err(self.db.fail("writing a commit's entries"))?;
            tx.execute(
                "INSERT INTO history (folder, path, version, committed_ns, entry) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::int8[], $5::bytea[]) \
                 ON CONFLICT (folder, path, version) DO UPDATE SET \
                 committed_ns = EXCLUDED.committed_ns, entry = EXCLUDED.entry",
                &[&folder, &w.h_paths, &w.h_versions, &w.h_times, &w.h_entries],
            )
            .map_err(self.db.fail("writing a commit's history"))?;
            // Delivered to every LISTENer when the transaction commits, never before.
            let payload = format!("{folder} {head}");
            tx.execute(
                "WITH bump AS (UPDATE folders SET head = $2 WHERE name = $1) \
                 SELECT pg_notify($3, $4)",
                &[&folder, &big(head), &super::CHANNEL, &payload],
            )
            .map_err(self.db.fail("moving a folder's head"))?;
        }
        tx.commit().map_err(self.db.fail("committing"))?;
        Ok(out)
    }
}

impl FolderMeta for PgFolders {
    fn ensure(&self, folder: &str) -> Result<u64> {
        check_folder_name(folder)?;
        let mut c = self.db.conn()?;
        let made = c
            .query_opt(
                "INSERT INTO folders (name) VALUES ($1) ON CONFLICT (name) DO NOTHING \
                 RETURNING head",
                &[&folder],
            )
            .map_err(self.db.fail("creating a folder"))?;
        match made {
            Some(r) => Ok(r.get::<_, i64>(0) as u64),
            None => self.head_on(&mut *c, folder),
        }
    }

    fn head(&self, folder: &str) -> Result<u64> {
        self.head_on(&mut *self.db.conn()?, folder)
    }

    fn names(&self) -> Result<Vec<String>> {
        let rows = self
            .db
            .conn()?
            .query("SELECT name FROM folders ORDER BY name", &[])
            .map_err(self.db.fail("listing the folders"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn keys(&self, folder: &str) -> Result<pb::FolderKeys> {
        let row = self
            .db
            .conn()?
            .query_opt("SELECT keys FROM folders WHERE name = $1", &[&folder])
            .map_err(self.db.fail("reading a folder's keys"))?
            .ok_or_else(|| no_folder(folder))?;
        decode_keys(folder, row.get(0))
    }

    fn encrypted(&self, folder: &str) -> Result<bool> {
        let row = self
            .db
            .conn()?
            .query_opt(
                "SELECT keys IS NOT NULL FROM folders WHERE name = $1",
                &[&folder],
            )
            .map_err(self.db.fail("reading whether a folder is encrypted"))?;
        Ok(row.is_some_and(|r| r.get(0)))
    }

    fn encrypted_count(&self) -> usize {
        let count = self.db.conn().and_then(|mut c| {
            c.query_one("SELECT count(*) FROM folders WHERE keys IS NOT NULL", &[])
                .map_err(self.db.fail("counting the encrypted folders"))
        });
        match count {
            Ok(r) => r.get::<_, i64>(0) as usize,
            Err(e) => {
                tracing::warn!("{e}");
                0
            }
        }
    }

    fn set_keys(
        &self,
        folder: &str,
        expected: u64,
        wrapped: Vec<pb::WrappedKey>,
    ) -> Result<pb::FolderKeys> {
        let mut c = self.db.conn()?;
        let mut tx = c
            .transaction()
            .map_err(self.db.fail("starting a change of keys"))?;
        // The commits lock this row too: a commit in the clear and the change to encrypted are
        // ordered, and of two devices making the folder encrypted one wins.
        let row = tx
            .query_opt(
                "SELECT head, keys FROM folders WHERE name = $1 FOR UPDATE",
                &[&folder],
            )
            .map_err(self.db.fail("locking a folder's keys"))?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no folder {folder:?} on this server: open it (Handshake) first"
                ))
            })?;
        let head = row.get::<_, i64>(0);
        let current = decode_keys(folder, row.get(1))?;
        if current.generation != expected {
            return Err(Error::Aborted(format!(
                "the keys of folder {folder} are at generation {}, not {expected}: another \
                 device changed them; read them again (GetFolderKeys) and retry",
                current.generation
            )));
        }
        if expected == 0 && head > 0 {
            let n: i64 = tx
                .query_one("SELECT count(*) FROM entries WHERE folder = $1", &[&folder])
                .map_err(self.db.fail("counting a folder's entries"))?
                .get(0);
            return Err(Error::Precondition(format!(
                "folder {folder} already holds {} in the clear: an encrypted folder must \
                 start empty; make a new folder for encrypted data",
                lbsync_cli::units::count(n as u64, "entry")
            )));
        }
        let new = pb::FolderKeys {
            generation: current.generation + 1,
            wrapped,
        };
        tx.execute(
            "UPDATE folders SET keys = $2 WHERE name = $1",
            &[&folder, &new.encode_to_vec()],
        )
        .map_err(self.db.fail("writing a folder's keys"))?;
        tx.commit()
            .map_err(self.db.fail("committing a folder's keys"))?;
        Ok(new)
    }

    fn current(&self, folder: &str, path: &SyncPath) -> Result<Option<Entry>> {
        let mut c = self.db.conn()?;
        self.head_on(&mut *c, folder)?;
        c.query_opt(
            "SELECT entry FROM entries WHERE folder = $1 AND path = $2",
            &[&folder, &path.as_str()],
        )
        .map_err(self.db.fail("reading an entry"))?
        .map(|r| decode(r.get(0)))
        .transpose()
    }

    fn commit_batch_checked(
        &self,
        folder: &str,
        commits: Vec<(Entry, u64)>,
        encrypted: bool,
    ) -> Result<(Vec<CommitOutcome>, Option<Error>)> {
        let mut c = self.db.conn()?;
        self.head_on(&mut *c, folder)?;
        let now = now_ns();
        let mut outcomes = Vec::with_capacity(commits.len());
        let mut failed = None;
        for group in commits.chunks(GROUP_TXN_COMMITS) {
            match self.commit_group(&mut c, folder, group, encrypted, now) {
                Ok(out) => outcomes.extend(out),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        Ok((outcomes, failed))
    }

    fn backlog(&self, folder: &str, cursor: u64) -> Result<(Backlog, u64)> {
        let mut c = self.db.conn()?;
        // The head and the entries from one snapshot: every path whose latest commit is after
        // the cursor and up to the head is listed (later ones come with their notification).
        let mut tx = c
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(self.db.fail("starting a read of the journal"))?;
        let head = self.head_on(&mut tx, folder)?;
        if cursor > head {
            return Err(Error::CursorAhead { cursor, head });
        }
        if head - cursor > JOURNAL_SCAN_LIMIT {
            return Ok((Backlog::Scan, head));
        }
        let rows = tx
            .query(
                "SELECT entry FROM entries WHERE folder = $1 AND seq > $2 AND seq <= $3 \
                 ORDER BY seq",
                &[&folder, &big(cursor), &big(head)],
            )
            .map_err(self.db.fail("reading the journal"))?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in rows {
            entries.extend(decode_listed(r.get(0))?);
        }
        tx.commit()
            .map_err(self.db.fail("ending a read of the journal"))?;
        Ok((Backlog::Compacted(entries), head))
    }

    fn scan_page(
        &self,
        folder: &str,
        cursor: u64,
        head: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<Vec<u8>>)> {
        let after = match after {
            Some(k) => std::str::from_utf8(k)
                .map_err(|_| Error::BadRequest("a scan key that is not UTF-8".into()))?,
            // Every path sorts after the empty one.
            None => "",
        };
        let rows = self
            .db
            .conn()?
            .query(
                "SELECT path, seq, entry FROM entries WHERE folder = $1 AND path > $2 \
                 ORDER BY path LIMIT $3",
                &[&folder, &after, &big(limit as u64)],
            )
            .map_err(self.db.fail("reading a page of current entries"))?;
        let read = rows.len();
        let last = rows.last().map(|r| r.get::<_, String>(0).into_bytes());
        let mut entries = Vec::new();
        for r in &rows {
            let seq = r.get::<_, i64>(1) as u64;
            if seq > cursor && seq <= head {
                entries.extend(decode_listed(r.get(2))?);
            }
        }
        Ok((entries, if read == limit { last } else { None }))
    }

    fn history(&self, folder: &str, path: &SyncPath, max: usize) -> Result<(Vec<Entry>, bool)> {
        let mut c = self.db.conn()?;
        self.head_on(&mut *c, folder)?;
        let rows = c
            .query(
                "SELECT entry FROM history WHERE folder = $1 AND path = $2 \
                 ORDER BY version DESC LIMIT $3",
                &[&folder, &path.as_str(), &big(max as u64).saturating_add(1)],
            )
            .map_err(self.db.fail("reading a path's history"))?;
        let more = rows.len() > max;
        let out = rows
            .iter()
            .take(max)
            .map(|r| decode(r.get(0)))
            .collect::<Result<Vec<_>>>()?;
        Ok((out, more))
    }

    fn version(&self, folder: &str, path: &SyncPath, version: u64) -> Result<Option<Entry>> {
        let mut c = self.db.conn()?;
        self.head_on(&mut *c, folder)?;
        c.query_opt(
            "SELECT entry FROM history WHERE folder = $1 AND path = $2 AND version = $3",
            &[&folder, &path.as_str(), &big(version)],
        )
        .map_err(self.db.fail("reading a version"))?
        .map(|r| decode(r.get(0)))
        .transpose()
    }

    fn current_entries(&self, folder: &str) -> Result<Vec<Entry>> {
        let rows = self
            .db
            .conn()?
            .query(
                "SELECT entry FROM entries WHERE folder = $1 ORDER BY path",
                &[&folder],
            )
            .map_err(self.db.fail("reading a folder's entries"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.extend(decode_listed(r.get(0))?);
        }
        Ok(out)
    }

    fn prune_history(
        &self,
        folder: &str,
        keep_versions: usize,
        keep_ns: i64,
        dry_run: bool,
        keep: &mut dyn FnMut(&Entry),
    ) -> Result<(u64, u64)> {
        let mut c = self.db.conn()?;
        let now = now_ns();
        let (mut kept, mut pruned) = (0u64, 0u64);
        let (mut gone_paths, mut gone_versions) = (Vec::<String>::new(), Vec::<i64>::new());
        {
            let mut rows = c
                .query_raw(
                    "SELECT path, version, entry FROM history WHERE folder = $1 \
                     ORDER BY path, version DESC",
                    [&folder as &dyn postgres::types::ToSql],
                )
                .map_err(self.db.fail("reading a folder's history"))?;
            let (mut path, mut rank) = (String::new(), 0usize);
            while let Some(r) = rows
                .next()
                .map_err(self.db.fail("reading a folder's history"))?
            {
                let Some(e) = decode_listed(r.get(2))? else {
                    continue;
                };
                let p: &str = r.get(0);
                if p != path {
                    (path, rank) = (p.to_owned(), 0);
                }
                if rank < keep_versions || now.saturating_sub(e.committed_ns) < keep_ns {
                    kept += 1;
                    keep(&e);
                } else {
                    pruned += 1;
                    gone_paths.push(path.clone());
                    gone_versions.push(r.get(1));
                }
                rank += 1;
            }
        }
        if !dry_run && !gone_paths.is_empty() {
            c.execute(
                "DELETE FROM history WHERE folder = $1 AND (path, version) IN \
                 (SELECT * FROM UNNEST($2::text[], $3::int8[]))",
                &[&folder, &gone_paths, &gone_versions],
            )
            .map_err(self.db.fail("pruning a folder's history"))?;
        }
        Ok((kept, pruned))
    }

    fn expired_seq(&self, folder: &str) -> Result<u64> {
        let row = self
            .db
            .conn()?
            .query_opt(
                "SELECT expired_seq FROM folders WHERE name = $1",
                &[&folder],
            )
            .map_err(self.db.fail("reading a folder's expiry horizon"))?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    /// Nothing to do: a path's only journal record is its current entry (see [`crate::pg`]),
    /// as a compacted sled journal has it.
    fn compact_journal(&self, _folder: &str, _dry_run: bool) -> Result<u64> {
        Ok(0)
    }

    fn expire_tombstones(&self, folder: &str, cutoff_ns: i64, dry_run: bool) -> Result<(u64, u64)> {
        let mut c = self.db.conn()?;
        let mut tx = c
            .transaction()
            .map_err(self.db.fail("starting an expiry"))?;
        // Locked like a commit: no commit re-creates a path while its tombstone is forgotten.
        let Some(row) = tx
            .query_opt(
                "SELECT expired_seq FROM folders WHERE name = $1 FOR UPDATE",
                &[&folder],
            )
            .map_err(self.db.fail("locking a folder for an expiry"))?
        else {
            return Ok((0, 0));
        };
        let horizon = row.get::<_, i64>(0) as u64;
        if dry_run {
            let r = tx
                .query_one(
                    "SELECT count(*), COALESCE(max(seq), 0) FROM entries \
                     WHERE folder = $1 AND deleted AND committed_ns < $2",
                    &[&folder, &cutoff_ns],
                )
                .map_err(self.db.fail("counting old tombstones"))?;
            let top = (r.get::<_, i64>(1) as u64).max(horizon);
            return Ok((r.get::<_, i64>(0) as u64, top));
        }
        let gone = tx
            .query(
                "DELETE FROM entries WHERE folder = $1 AND deleted AND committed_ns < $2 \
                 RETURNING path, seq",
                &[&folder, &cutoff_ns],
            )
            .map_err(self.db.fail("forgetting old tombstones"))?;
        let paths: Vec<&str> = gone.iter().map(|r| r.get(0)).collect();
        let top = gone
            .iter()
            .map(|r| r.get::<_, i64>(1) as u64)
            .fold(horizon, u64::max);
        if !paths.is_empty() {
            tx.execute(
                "DELETE FROM history WHERE folder = $1 AND path = ANY($2)",
                &[&folder, &paths],
            )
            .map_err(self.db.fail("forgetting the history of old tombstones"))?;
            tx.execute(
                "UPDATE folders SET expired_seq = $2 WHERE name = $1",
                &[&folder, &big(top)],
            )
            .map_err(self.db.fail("raising a folder's expiry horizon"))?;
        }
        tx.commit().map_err(self.db.fail("committing an expiry"))?;
        let expired = paths.len() as u64;
        if expired > 0 {
            tracing::info!(
                "folder {folder}: forgot {} past their retention; clients behind seq {top} \
                 re-scan",
                lbsync_cli::units::count(expired, "tombstone")
            );
        }
        Ok((expired, top))
    }
}

/// A folder's stored keys: generation 0 and none when it is plain (`None`).
fn decode_keys(folder: &str, stored: Option<&[u8]>) -> Result<pb::FolderKeys> {
    match stored {
        Some(b) => pb::FolderKeys::decode(b).map_err(|err| {
            Error::Metadata(format!("the keys of folder {folder} do not decode: {err}"))
        }),
        None => Ok(pb::FolderKeys::default()),
    }
}
