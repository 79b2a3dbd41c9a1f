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

use std::fs;
use std::path::PathBuf;

use lbsync_chunkstore::ChunkId;
use tracing::debug;

/// The cache's size on disk before the oldest entries go.
pub const BUDGET: u64 = 64 << 20;
/// Chunks of files up to this size are cached.
pub const CACHED_FILE_MAX: u64 = 1 << 20;

/// Entry header: a tag (0 raw, 1 zstd) and the chunk's length, u32 little-endian.
const HEADER: usize = 5;

/// The chunk cache of one synced directory.
pub struct ChunkCache {
    dir: PathBuf,
    used: u64,
    budget: u64,
    /// Keeps nothing (see [`ChunkCache::off`]).
    off: bool,
}

impl ChunkCache {
    /// Opens (creating) the cache in `dir`.
    pub fn open(dir: PathBuf) -> Self {
        Self::with_budget(dir, BUDGET)
    }

    /// Opens the cache with a budget of its own (tests).
    pub fn with_budget(dir: PathBuf, budget: u64) -> Self {
        if let Err(e) = fs::create_dir_all(&dir) {
            debug!("no chunk cache in {}: {e}", dir.display());
        }
        let used = entries(&dir).iter().map(|(_, len, _)| len).sum();
        Self {
            dir,
            used,
            budget,
            off: false,
        }
    }

    /// A cache that keeps nothing: an encrypted folder's chunks never travel as deltas, so its
    /// plaintext is not copied into `.lbsync/` for them.
    pub fn off() -> Self {
        Self {
            dir: PathBuf::new(),
            used: 0,
            budget: 0,
            off: true,
        }
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// The chunk's bytes, if cached and intact.
    pub fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        if self.off {
            return None;
        }
        let path = self.path(id);
        let stored = fs::read(&path).ok()?;
        let data = decode(&stored).filter(|d| ChunkId::of(d) == *id);
        if data.is_none() {
            debug!("dropping damaged cache entry {id}");
            let _ = fs::remove_file(&path);
        }
        data
    }

    /// Keeps a copy of a chunk (best effort: a cache that cannot be written is only a miss later).
    pub fn put(&mut self, id: &ChunkId, data: &[u8]) {
        if self.off {
            return;
        }
        let path = self.path(id);
        if path.exists() {
            return;
        }
        let (tag, body) = match lbsync_chunkstore::compress_if_smaller(data) {
            Some(z) => (1u8, z),
            None => (0u8, data.to_vec()),
        };
        let mut stored = Vec::with_capacity(HEADER + body.len());
        stored.push(tag);
        stored.extend_from_slice(&(data.len() as u32).to_le_bytes());
        stored.extend_from_slice(&body);
        let tmp = self.dir.join(format!("{id}.tmp"));
        match fs::write(&tmp, &stored).and_then(|()| fs::rename(&tmp, &path)) {
            Ok(()) => self.used += stored.len() as u64,
            Err(e) => {
                debug!("cannot cache chunk {id}: {e}");
                let _ = fs::remove_file(&tmp);
                return;
            }
        }
        if self.used > self.budget {
            self.evict();
        }
    }

    /// Removes the oldest entries until the cache is at three quarters of its budget.
    fn evict(&mut self) {
        let mut all = entries(&self.dir);
        all.sort_by_key(|(_, _, modified)| *modified);
        self.used = all.iter().map(|(_, len, _)| len).sum();
        let target = self.budget / 4 * 3;
        for (path, len, _) in all {
            if self.used <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                self.used -= len;
            }
        }
    }

    /// Bytes on disk.
    pub fn used(&self) -> u64 {
        self.used
    }
}

/// (path, length, modified) of every entry.
fn entries(dir: &std::path::Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let md = e.metadata().ok()?;
            let modified = md.modified().ok()?;
            md.is_file().then(|| (e.path(), md.len(), modified))
        })
        .collect()
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
        let mut cache = ChunkCache::with_budget(dir.path().join("cache"), 40_000);
        let text = b"fn main() {}\n".repeat(100);
        let id = ChunkId::of(&text);
        cache.put(&id, &text);
        assert_eq!(cache.get(&id).as_deref(), Some(&text[..]));
        assert!(cache.used() < text.len() as u64, "stored compressed");

        // A damaged entry is a miss, and goes.
        let path = dir.path().join("cache").join(id.to_string());
        let mut stored = fs::read(&path).unwrap();
        let last = stored.len() - 1;
        stored[last] ^= 1;
        fs::write(&path, stored).unwrap();
        assert_eq!(cache.get(&id), None);
        assert!(!path.exists());

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
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(cache.used() <= 40_000, "{}", cache.used());
        assert!(cache.get(&ids[0]).is_none(), "the oldest went");
        assert!(cache.get(&ids[7]).is_some(), "the newest stayed");
        let reopened = ChunkCache::with_budget(dir.path().join("cache"), 40_000);
        assert_eq!(reopened.used(), cache.used());
    }
}
