//! Chunking parameters: a value kept in the store's metadata, handed to clients in the handshake.

use crate::error::{Error, Result};

/// The largest `max_size` a store accepts. Chunks travel whole in one gRPC message, so this must
/// stay well under the message size limit (4 MiB by default in tonic).
pub const MAX_CHUNK_LIMIT: u32 = 1 << 20;

const _: () = assert!(
    MAX_CHUNK_LIMIT < 4 << 20,
    "a chunk must fit in one gRPC message"
);

/// FastCDC v2020 parameters: minimum, average (target) and maximum chunk size in bytes.
///
/// Cut points depend on all three, so two parties can only dedup against each other when they
/// chunk with the same parameters: the store records them when it is created and clients take
/// them from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkParams {
    /// No chunk is shorter, except a file's last one.
    pub min_size: u32,
    /// The size chunks are normalised towards.
    pub avg_size: u32,
    /// No chunk is longer.
    pub max_size: u32,
}

impl ChunkParams {
    /// LBFS's choice: 2 KiB / 8 KiB / 64 KiB.
    pub const LBFS: ChunkParams = ChunkParams {
        min_size: 2 << 10,
        avg_size: 8 << 10,
        max_size: 64 << 10,
    };

    /// 4 KiB / 16 KiB / 128 KiB.
    pub const AVG_16K: ChunkParams = ChunkParams {
        min_size: 4 << 10,
        avg_size: 16 << 10,
        max_size: 128 << 10,
    };

    /// 16 KiB / 64 KiB / 512 KiB.
    pub const AVG_64K: ChunkParams = ChunkParams {
        min_size: 16 << 10,
        avg_size: 64 << 10,
        max_size: 512 << 10,
    };

    /// What a new store is created with.
    pub const DEFAULT: ChunkParams = ChunkParams::LBFS;

    /// Files of at least this size are chunked with [`ChunkParams::for_file`]'s larger sizes.
    pub const LARGE_FILE: u64 = 4 << 30;

    /// The parameters for a file of `size` bytes: these parameters below [`Self::LARGE_FILE`],
    /// and 16 times larger sizes (capped at [`MAX_CHUNK_LIMIT`]) from there on.
    ///
    /// A file's manifest costs 36 bytes per chunk wherever it is held, so at 8 KiB chunks a
    /// 10 GB file would need 47 MB for its chunk list alone, in the client, in the index of local
    /// chunks and on the wire. Like Syncthing, whose blocks grow with the file, a very large file
    /// takes larger chunks: 10 GB then has about 80 000. An edit of such a file costs one larger
    /// chunk (about 128 KiB instead of 8 KiB), and it dedups against other files of its class.
    pub fn for_file(&self, size: u64) -> ChunkParams {
        if size < Self::LARGE_FILE {
            return *self;
        }
        let scale = |v: u32| v.saturating_mul(16).min(MAX_CHUNK_LIMIT);
        let large = ChunkParams {
            min_size: scale(self.min_size),
            avg_size: scale(self.avg_size),
            max_size: scale(self.max_size),
        };
        if large.validate().is_ok() {
            large
        } else {
            *self
        }
    }

    /// The longest chunk of any file: the largest `max_size` of [`ChunkParams::for_file`].
    pub fn largest_chunk(&self) -> u32 {
        self.for_file(u64::MAX).max_size.max(self.max_size)
    }

    /// Parameters after checking them against what FastCDC v2020 and the wire allow.
    pub fn new(min_size: u32, avg_size: u32, max_size: u32) -> Result<Self> {
        let p = ChunkParams {
            min_size,
            avg_size,
            max_size,
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks the parameters: even sizes, min < avg < max, within FastCDC's ranges and under
    /// [`MAX_CHUNK_LIMIT`].
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let bad = |what: String| Err(Error::BadParams(what));
        if min % 2 != 0 || avg % 2 != 0 || max % 2 != 0 {
            return bad(format!("sizes must be even, got {self}"));
        }
        if !(min < avg && avg < max) {
            return bad(format!("need min < avg < max, got {self}"));
        }
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&min) {
            return bad(format!("min {min} outside {MINIMUM_MIN}..={MINIMUM_MAX}"));
        }
        if !(AVERAGE_MIN..=AVERAGE_MAX).contains(&avg) {
            return bad(format!("avg {avg} outside {AVERAGE_MIN}..={AVERAGE_MAX}"));
        }
        if !(MAXIMUM_MIN..=MAX_CHUNK_LIMIT as usize).contains(&max) {
            return bad(format!(
                "max {max} outside {MAXIMUM_MIN}..={MAX_CHUNK_LIMIT}"
            ));
        }
        Ok(())
    }

    /// A 12-byte encoding for the store's metadata.
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[0..4].copy_from_slice(&self.min_size.to_le_bytes());
        out[4..8].copy_from_slice(&self.avg_size.to_le_bytes());
        out[8..12].copy_from_slice(&self.max_size.to_le_bytes());
        out
    }

    /// Decodes and validates [`ChunkParams::to_bytes`]'s output.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let b: &[u8; 12] = b
            .try_into()
            .map_err(|_| Error::BadParams(format!("expected 12 bytes, got {}", b.len())))?;
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self::new(word(0), word(4), word(8))
    }
}

impl Default for ChunkParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::fmt::Display for ChunkParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min {} / avg {} / max {} bytes",
            self.min_size, self.avg_size, self.max_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_round_trip() {
        for p in [
            ChunkParams::LBFS,
            ChunkParams::AVG_16K,
            ChunkParams::AVG_64K,
        ] {
            p.validate().unwrap();
            assert_eq!(ChunkParams::from_bytes(&p.to_bytes()).unwrap(), p);
        }
    }

    #[test]
    fn very_large_files_take_larger_chunks() {
        let p = ChunkParams::LBFS;
        assert_eq!(p.for_file(0), p);
        assert_eq!(p.for_file(ChunkParams::LARGE_FILE - 1), p);
        let large = p.for_file(10 << 30);
        assert_eq!(
            (large.min_size, large.avg_size, large.max_size),
            (32 << 10, 128 << 10, 1 << 20)
        );
        assert_eq!(p.largest_chunk(), MAX_CHUNK_LIMIT);
        // Where 16 times larger is not valid, a file keeps the store's parameters.
        let p = ChunkParams::AVG_64K;
        assert_eq!(p.for_file(u64::MAX), p);
        assert_eq!(p.largest_chunk(), p.max_size);
    }

    #[test]
    fn rejects_bad_params() {
        assert!(ChunkParams::new(2049, 8192, 65536).is_err());
        assert!(ChunkParams::new(8192, 8192, 65536).is_err());
        assert!(ChunkParams::new(2048, 8192, 4 << 20).is_err());
        assert!(ChunkParams::from_bytes(&[0; 5]).is_err());
    }
}
