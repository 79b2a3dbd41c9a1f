//! [`LengthMask`]: hides the chunk lengths a manifest of an end-to-end encrypted folder shows the
//! server.
//!
//! A manifest of an encrypted folder is the usual encoding (see [`crate::Manifest`]) over refs of
//! sealed chunk ids and *masked* lengths:
//!
//! ```text
//! m      = u32 LE of keyed_hash(mask key, chunk id)[..4]
//! masked = ((len - 1) ^ (m & 0x7fff_ffff)) + 1
//! ```
//!
//! The map is its own inverse ([`LengthMask::remove`] is [`LengthMask::apply`]) and takes the
//! lengths `1 ..= MAX_MASKED_LEN` onto themselves, so a masked length is never 0 and the
//! encoding's size field (the sum of the masked lengths) still adds up: the server and fsck
//! decode such a manifest with [`Manifest::decode`](crate::Manifest::decode) as any other, while
//! the real lengths are known only to holders of the folder key. The mask key is derived from the
//! folder key by the client (crate `lbsync-crypt`); this crate only applies it.

use std::fmt;

use crate::id::ChunkId;

/// The largest length a mask keeps in range: masks flip the low 31 bits of `len - 1`, so the
/// lengths `1 ..= MAX_MASKED_LEN` map onto themselves. Chunks are far shorter.
pub const MAX_MASKED_LEN: u32 = 1 << 31;

/// The key that masks chunk lengths in the manifests of one encrypted folder (see the module
/// docs). Its `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct LengthMask([u8; 32]);

impl LengthMask {
    /// The mask with this key (the folder key's "length mask" subkey).
    pub const fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn word(&self, id: &ChunkId) -> u32 {
        let h = blake3::keyed_hash(&self.0, id.as_bytes());
        let m = u32::from_le_bytes(h.as_bytes()[..4].try_into().expect("4 bytes"));
        m & 0x7fff_ffff
    }

    /// The masked form of the length `len` of chunk `id`. For `1 ..= MAX_MASKED_LEN` the result
    /// is in the same range (never 0).
    pub fn apply(&self, id: &ChunkId, len: u32) -> u32 {
        (len.wrapping_sub(1) ^ self.word(id)).wrapping_add(1)
    }

    /// The real length of chunk `id` from its masked length (the same map as [`Self::apply`]).
    pub fn remove(&self, id: &ChunkId, masked: u32) -> u32 {
        self.apply(id, masked)
    }
}

impl fmt::Debug for LengthMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LengthMask(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pinned_value() {
        // keyed_hash([7; 32], ChunkId::of(b"x")) pins the formula: a change of the mask is a
        // format change (manifest ids of every encrypted folder would change).
        let mask = LengthMask::new([7; 32]);
        let id = ChunkId::of(b"x");
        let h = blake3::keyed_hash(&[7; 32], id.as_bytes());
        let m = u32::from_le_bytes(h.as_bytes()[..4].try_into().unwrap()) & 0x7fff_ffff;
        assert_eq!(mask.apply(&id, 1), m + 1);
        assert_eq!(mask.apply(&id, 8192), (8191 ^ m) + 1);
        assert_ne!(mask.apply(&id, 8192), 8192, "this id's mask is not 0");
        assert_eq!(format!("{mask:?}"), "LengthMask(..)");
    }

    proptest! {
        #[test]
        fn involution_in_range_and_never_zero(
            key in any::<[u8; 32]>(),
            id in any::<[u8; 32]>(),
            len in 1u32..=MAX_MASKED_LEN,
        ) {
            let mask = LengthMask::new(key);
            let id = ChunkId::from_bytes(id);
            let masked = mask.apply(&id, len);
            prop_assert!((1..=MAX_MASKED_LEN).contains(&masked));
            prop_assert_eq!(mask.remove(&id, masked), len);
        }

        #[test]
        fn involution_everywhere(key in any::<[u8; 32]>(), id in any::<[u8; 32]>(), x in any::<u32>()) {
            let mask = LengthMask::new(key);
            let id = ChunkId::from_bytes(id);
            prop_assert_eq!(mask.remove(&id, mask.apply(&id, x)), x);
        }
    }
}
