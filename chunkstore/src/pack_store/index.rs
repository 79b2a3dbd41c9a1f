//! Keys and values of the `chunks` tree of the sled index.
//!
//! - a 32-byte chunk id → [`IndexEntry`] (29 bytes: u32 pack, u64 offset, u32 stored_len,
//!   u32 raw_len, u8 flags, u64 inserted_at in Unix seconds; little-endian);
//! - `"\xffwm"` + u32 big-endian pack number → u64 little-endian watermark: every record of the pack
//!   before this offset is indexed (or was swept). Entries and watermarks go in one batch, so the
//!   watermark never runs ahead of the entries.

use crate::id::ChunkId;
use crate::pack::{RECORD_HEADER_LEN, RecordHeader};

pub(crate) const WATERMARK_PREFIX: &[u8; 3] = b"\xffwm";

/// Where a chunk's record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) pack: u32,
    pub(crate) offset: u64,
    pub(crate) stored_len: u32,
    pub(crate) raw_len: u32,
    pub(crate) flags: u8,
    pub(crate) inserted_at: u64,
}

impl IndexEntry {
    pub(crate) const LEN: usize = 29;

    /// The entry of the record with `header` at `offset` of `pack`.
    pub(crate) fn of(header: &RecordHeader, pack: u32, offset: u64, inserted_at: u64) -> Self {
        Self {
            pack,
            offset,
            stored_len: header.stored_len,
            raw_len: header.raw_len,
            flags: header.flags,
            inserted_at,
        }
    }

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&self.pack.to_le_bytes());
        b[4..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.raw_len.to_le_bytes());
        b[20] = self.flags;
        b[21..29].copy_from_slice(&self.inserted_at.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::LEN] = b.try_into().ok()?;
        Some(Self {
            pack: u32::from_le_bytes(b[0..4].try_into().ok()?),
            offset: u64::from_le_bytes(b[4..12].try_into().ok()?),
            stored_len: u32::from_le_bytes(b[12..16].try_into().ok()?),
            raw_len: u32::from_le_bytes(b[16..20].try_into().ok()?),
            flags: b[20],
            inserted_at: u64::from_le_bytes(b[21..29].try_into().ok()?),
        })
    }

    pub(crate) fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.stored_len)
    }
}

pub(crate) fn watermark_key(pack: u32) -> [u8; 7] {
    let mut k = [0u8; 7];
    k[..3].copy_from_slice(WATERMARK_PREFIX);
    k[3..].copy_from_slice(&pack.to_be_bytes());
    k
}

/// The chunk id of an index key, or `None` for the other keys (watermarks).
pub(crate) fn chunk_key(key: &[u8]) -> Option<ChunkId> {
    ChunkId::from_slice(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip() {
        let e = IndexEntry {
            pack: 7,
            offset: 1 << 33,
            stored_len: 100,
            raw_len: 200,
            flags: 1,
            inserted_at: 1_700_000_000,
        };
        assert_eq!(IndexEntry::decode(&e.encode()), Some(e));
        assert_eq!(IndexEntry::decode(&[0; 5]), None);
        assert!(chunk_key(&watermark_key(3)).is_none());
    }
}
