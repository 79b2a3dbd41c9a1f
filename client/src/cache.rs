//! `.lbsync/cache/`: copies of the chunks of recently synced small files, so that an edit of one
//! can travel as a delta against the version it replaced.
//!
//! A file edited in place no longer holds its old bytes, and a small file is usually one chunk:
//! without a copy, changing one line of a 6 KB source file re-sends all of it. With the old chunk
//! at hand the client sends zstd of the new chunk with the old one as a prefix (the server has the
//! old one), which comes to about the edit. Only chunks of files up to [`CACHED_FILE_MAX`] are
//! kept (large files' edits already cost one chunk of many), compressed, and the oldest go when
//! the cache passes [`BUDGET`]. Entries are checked against their id when read, so a damaged one
//! is only a miss.
//!
//! The cache keeps a chunk's stored form, what the server holds and deltas are made of: in an
//! encrypted folder the sealed bytes (which hash to the chunk's id as plain bytes do), so it
//! holds no plaintext the folder itself does not.

use std::path::Path;

use lbsync_chunkstore::ChunkId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tracing::debug;

/// The cache's size on disk before the oldest entries go.
pub const BUDGET: u64 = 64 << 20;
/// Chunks of files up to this size are cached.
pub const CACHED_FILE_MAX: u64 = 1 << 20;

/// The cache's database in `.lbsync/`.
pub const CACHE_FILE: &str = "cache.db";

/// Entry header: a tag (0 raw, 1 zstd) and the chunk's length, u32 little-endian.
const HEADER: usize = 5;

/// The chunk cache of one synced directory: one SQLite table, entries in the order they came
/// (`n`), so the oldest go first. A file of its own beside the state, written without fsync: it
/// is only a cache, and a lost entry is a miss.
pub struct ChunkCache {
    conn: Option<Connection>,
    used: u64,
    budget: u64,
}

impl ChunkCache {
    /// Opens (creating) the cache in the directory `dir` (`.lbsync/`).
    pub fn open(dir: &Path) -> Self {
        Self::with_budget(dir, BUDGET)
    }

    /// Opens the cache with a budget of its own (tests).
    pub fn with_budget(dir: &Path, budget: u64) -> Self {
        // Clients before the database kept a file a chunk in `cache/`.
        let _ = std::fs::remove_dir_all(dir.join("cache"));
        match open_db(&dir.join(CACHE_FILE)) {
            Ok((conn, used)) => Self {
                conn: Some(conn),
                used,
                budget,
            },
            Err(e) => {
                debug!("no chunk cache in {}: {e}", dir.display());
                Self::off()
            }
        }
    }

    /// A cache that keeps nothing: an encrypted folder's chunks never travel as deltas, so its
    /// plaintext is not copied into `.lbsync/` for them.
    pub fn off() -> Self {
        Self {
            conn: None,
            used: 0,
            budget: 0,
        }
    }

    /// The chunk's bytes, if cached and intact.
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let conn = self.conn.as_ref()?;
        let stored: Vec<u8> = conn
            .prepare_cached("SELECT stored FROM chunks WHERE id = ?1")
            .and_then(|mut q| q.query_row([&id.as_bytes()[..]], |r| r.get(0)).optional())
            .ok()
            .flatten()?;
        let data = decode(&stored).filter(|d| ChunkId::of(d) == *id);
        if data.is_none() {
            debug!("dropping damaged cache entry {id}");
            let _ = conn.execute("DELETE FROM chunks WHERE id = ?1", [&id.as_bytes()[..]]);
        }
        data
    }

    /// Keeps a copy of a chunk (best effort: a cache that cannot be written is only a miss later).
    pub fn put(&mut self, id: &ChunkId, data: &[u8]) {
        let Some(conn) = &self.conn else {
            return;
        };
        let (tag, body) = match lbsync_chunkstore::compress_if_smaller(data) {
            Some(z) => (1u8, z),
            None => (0u8, data.to_vec()),
        };
        let mut stored = Vec::with_capacity(HEADER + body.len());
        stored.push(tag);
        stored.extend_from_slice(&(data.len() as u32).to_le_bytes());
        stored.extend_from_slice(&body);
        let put = conn
            .prepare_cached("INSERT OR IGNORE INTO chunks (id, stored) VALUES (?1, ?2)")
            .and_then(|mut q| q.execute(params![&id.as_bytes()[..], stored]));
        match put {
            Ok(1) => self.used += stored.len() as u64,
            Ok(_) => return,
            Err(e) => {
                debug!("cannot cache chunk {id}: {e}");
                return;
            }
        }
        if self.used > self.budget {
            self.evict();
        }
    }

    /// Removes the oldest entries until the cache is at three quarters of its budget.
    fn evict(&mut self) {
        let Some(conn) = &self.conn else {
            return;
        };
        let target = self.budget / 4 * 3;
        let evict = || -> rusqlite::Result<u64> {
            let mut oldest = conn.prepare("SELECT n, length(stored) FROM chunks ORDER BY n")?;
            let mut rows = oldest.query([])?;
            let (mut left, mut last) = (self.used, None);
            while left > target {
                let Some(row) = rows.next()? else { break };
                last = Some(row.get::<_, i64>(0)?);
                left = left.saturating_sub(row.get::<_, i64>(1)? as u64);
            }
            drop(rows);
            if let Some(n) = last {
                conn.execute("DELETE FROM chunks WHERE n <= ?1", [n])?;
            }
            used(conn)
        };
        match evict() {
            Ok(used) => self.used = used,
            Err(e) => debug!("evicting from the chunk cache: {e}"),
        }
    }

    /// Bytes of entries.
    pub fn used(&self) -> u64 {
        self.used
    }
}

/// Opens the cache's database (creating its table) and sums its entries.
fn open_db(path: &Path) -> rusqlite::Result<(Connection, u64)> {
    let conn = crate::state::db::connect(
        path,
        OpenFlags::SQLITE_OPEN_CREATE,
        std::time::Duration::from_secs(2),
        "OFF",
        2048,
    )?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS chunks (
             n INTEGER PRIMARY KEY,
             id BLOB NOT NULL UNIQUE,
             stored BLOB NOT NULL
         );",
    )?;
    let used = used(&conn)?;
    Ok((conn, used))
}

/// Bytes of the entries.
fn used(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT CAST(total(length(stored)) AS INTEGER) FROM chunks",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}

fn decode(stored: &[u8]) -> Option<Vec<u8>> {
    let (&tag, rest) = stored.split_first()?;
    let (len, body) = rest.split_at_checked(4)?;
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    match tag {
        0 => Some(body.to_vec()),
        1 => lbsync_chunkstore::decompress(body, len).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_verifies_and_evicts_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = ChunkCache::with_budget(dir.path(), 40_000);
        let text = b"fn main() {}\n".repeat(100);
        let id = ChunkId::of(&text);
        cache.put(&id, &text);
        assert_eq!(cache.get(&id).as_deref(), Some(&text[..]));
        assert!(cache.used() < text.len() as u64, "stored compressed");

        // A damaged entry is a miss, and goes.
        let conn = Connection::open(dir.path().join(CACHE_FILE)).unwrap();
        conn.execute(
            "UPDATE chunks SET stored = CAST(stored || x'00' AS BLOB) WHERE id = ?1",
            [&id.as_bytes()[..]],
        )
        .unwrap();
        assert_eq!(cache.get(&id), None);
        let left: i64 = conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);

        // Over budget, the oldest entries go first.
        let mut ids = Vec::new();
        for i in 0..8u8 {
            let mut noise = vec![0u8; 8000];
            blake3::Hasher::new()
                .update(&[i])
                .finalize_xof()
                .fill(&mut noise);
            let id = ChunkId::of(&noise);
            cache.put(&id, &noise);
            ids.push(id);
        }
        assert!(cache.used() <= 40_000, "{}", cache.used());
        assert!(cache.get(&ids[0]).is_none(), "the oldest went");
        assert!(cache.get(&ids[7]).is_some(), "the newest stayed");
        let reopened = ChunkCache::with_budget(dir.path(), 40_000);
        assert_eq!(reopened.used(), cache.used());
    }

    #[test]
    fn an_older_clients_cache_directory_goes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        std::fs::write(dir.path().join("cache").join("ab"), b"x").unwrap();
        let _cache = ChunkCache::open(dir.path());
        assert!(!dir.path().join("cache").exists());
        assert!(dir.path().join(CACHE_FILE).exists());
    }
}
