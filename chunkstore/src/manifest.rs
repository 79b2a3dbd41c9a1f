//! Manifests: a file's ordered list of chunks, with a stable binary encoding.
//!
//! Encoding, version 1 (all integers little-endian):
//!
//! ```text
//! u8   version = 1
//! u64  total size in bytes
//! u32  chunk count n
//! n ×  { [u8; 32] chunk id, u32 chunk length }
//! ```
//!
//! The manifest's id ([`ManifestId`]) is the BLAKE3 of that encoding. Decoding checks the version,
//! the count against the length, that no chunk is empty and that the lengths add up to the size.
//!
//! In an end-to-end encrypted folder a manifest carries a [`LengthMask`]: the encoding (and so
//! the id) has each chunk's *masked* length and their sum as the size, while [`Manifest::chunks`],
//! [`Manifest::size`] and [`Manifest::with_offsets`] give the real lengths. Without the mask the
//! encoding is still a valid manifest (the server decodes it with [`Manifest::decode`]); with it,
//! [`Manifest::decode_masked`] gets the real lengths back. See [`crate::LengthMask`].

use crate::error::{Error, Result};
use crate::id::{ChunkId, ManifestId};
use crate::mask::{LengthMask, MAX_MASKED_LEN};

/// The encoding version this build writes.
pub const MANIFEST_VERSION: u8 = 1;

/// The most chunks a manifest may have: 128 GiB files at 8 KiB chunks, 1 TiB at 64 KiB. Bounds
/// the memory a manifest (or a delta) from a peer can take.
pub const MAX_MANIFEST_CHUNKS: u64 = 1 << 24;

const HEADER_LEN: usize = 1 + 8 + 4;
const ENTRY_LEN: usize = ChunkId::LEN + 4;

/// The longest manifest encoding: [`MAX_MANIFEST_CHUNKS`] entries. Manifests are stored as one
/// record, so this bounds a record's length too.
pub const MAX_MANIFEST_BYTES: u64 = HEADER_LEN as u64 + ENTRY_LEN as u64 * MAX_MANIFEST_CHUNKS;

/// One chunk of a file: its id and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// The chunk's id.
    pub id: ChunkId,
    /// The chunk's length in bytes.
    pub len: u32,
}

/// A file's content as an ordered list of chunks (real lengths), and in an encrypted folder the
/// mask its encoding applies to them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Manifest {
    chunks: Vec<ChunkRef>,
    size: u64,
    mask: Option<LengthMask>,
}

impl Manifest {
    /// A manifest of the given chunks, in file order.
    pub fn new(chunks: Vec<ChunkRef>) -> Self {
        let size = chunks.iter().map(|c| u64::from(c.len)).sum();
        Self {
            chunks,
            size,
            mask: None,
        }
    }

    /// The same manifest of an encrypted folder: its encoding and id carry lengths masked with
    /// `mask`. The chunks' lengths must be at most [`MAX_MASKED_LEN`] (every chunk is).
    pub fn masked(self, mask: LengthMask) -> Self {
        self.with_mask(Some(mask))
    }

    /// The same manifest with `mask` (none: a plain folder's manifest).
    pub fn with_mask(mut self, mask: Option<LengthMask>) -> Self {
        self.mask = mask;
        self
    }

    /// The mask the encoding applies, in an encrypted folder.
    pub fn mask(&self) -> Option<&LengthMask> {
        self.mask.as_ref()
    }

    /// A chunk's reference as the encoding has it: its length masked when the manifest is.
    pub fn encoded_ref(&self, c: &ChunkRef) -> ChunkRef {
        match &self.mask {
            Some(mask) => ChunkRef {
                id: c.id,
                len: mask.apply(&c.id, c.len),
            },
            None => *c,
        }
    }

    /// The manifest of an empty file.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The file's chunks in order.
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Each chunk with the file offset it starts at.
    pub fn with_offsets(&self) -> impl Iterator<Item = (u64, &ChunkRef)> + '_ {
        self.chunks.iter().scan(0u64, |offset, c| {
            let at = *offset;
            *offset += u64::from(c.len);
            Some((at, c))
        })
    }

    /// The stable binary encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.chunks.len());
        self.encode_into(|part| out.extend_from_slice(part));
        out
    }

    /// Decodes and checks an encoding made by [`Manifest::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |what: String| Err(Error::BadManifest(what));
        if bytes.len() < HEADER_LEN {
            return bad(format!("{} bytes is shorter than the header", bytes.len()));
        }
        if bytes[0] != MANIFEST_VERSION {
            return bad(format!(
                "version {} is not {MANIFEST_VERSION}: written by a newer lbsync? upgrade this one",
                bytes[0]
            ));
        }
        let size = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
        if count as u64 > MAX_MANIFEST_CHUNKS {
            return bad(format!(
                "{count} chunks is over the limit of {MAX_MANIFEST_CHUNKS}"
            ));
        }
        let body = &bytes[HEADER_LEN..];
        if count.checked_mul(ENTRY_LEN) != Some(body.len()) {
            return bad(format!(
                "{count} chunks need {} bytes of entries, found {}",
                count.saturating_mul(ENTRY_LEN),
                body.len()
            ));
        }
        let mut chunks = Vec::with_capacity(count);
        let mut total = 0u64;
        for e in body.chunks_exact(ENTRY_LEN) {
            let id = ChunkId::from_slice(&e[..32]).expect("32 bytes");
            let len = u32::from_le_bytes(e[32..36].try_into().expect("4 bytes"));
            if len == 0 {
                return bad(format!("chunk {id} has length 0"));
            }
            total += u64::from(len);
            chunks.push(ChunkRef { id, len });
        }
        if total != size {
            return bad(format!(
                "chunk lengths add up to {total}, header says {size}"
            ));
        }
        Ok(Self {
            chunks,
            size,
            mask: None,
        })
    }

    /// Decodes the encoding of a manifest of an encrypted folder, made by [`Manifest::encode`] on
    /// a manifest masked with `mask`, and takes the mask off the lengths. A length that does not
    /// unmask to one in `1 ..= MAX_MASKED_LEN` is an error: the manifest was not masked with this
    /// mask.
    pub fn decode_masked(bytes: &[u8], mask: &LengthMask) -> Result<Self> {
        let encoded = Self::decode(bytes)?;
        let chunks = unmask_refs(&encoded.chunks, mask)?;
        Ok(Self::new(chunks).masked(mask.clone()))
    }

    /// The manifest's id: the BLAKE3 of its encoding.
    pub fn id(&self) -> ManifestId {
        let mut h = blake3::Hasher::new();
        self.encode_into(|part| {
            h.update(part);
        });
        ManifestId::from_bytes(*h.finalize().as_bytes())
    }

    /// The encoding, in pieces of at most about 64 KiB, without building it whole: for hashing
    /// and writing the manifests of very large files.
    pub fn encode_into(&self, mut out: impl FnMut(&[u8])) {
        // Masked lengths are computed once: the size field is their sum.
        let masked: Option<Vec<u32>> = self.mask.as_ref().map(|mask| {
            self.chunks
                .iter()
                .map(|c| mask.apply(&c.id, c.len))
                .collect()
        });
        let size = match &masked {
            Some(lens) => lens.iter().map(|&l| u64::from(l)).sum(),
            None => self.size,
        };
        let mut buf = Vec::with_capacity(64 << 10);
        buf.push(MANIFEST_VERSION);
        buf.extend_from_slice(&size.to_le_bytes());
        buf.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for (i, c) in self.chunks.iter().enumerate() {
            if buf.len() + ENTRY_LEN > buf.capacity() {
                out(&buf);
                buf.clear();
            }
            let len = masked.as_ref().map_or(c.len, |lens| lens[i]);
            buf.extend_from_slice(c.id.as_bytes());
            buf.extend_from_slice(&len.to_le_bytes());
        }
        out(&buf);
    }
}

/// Refs with the mask taken off their lengths; a length that does not unmask into
/// `1 ..= MAX_MASKED_LEN` is an error that names the chunk.
pub(crate) fn unmask_refs(refs: &[ChunkRef], mask: &LengthMask) -> Result<Vec<ChunkRef>> {
    refs.iter()
        .map(|c| {
            let len = mask.remove(&c.id, c.len);
            if len == 0 || len > MAX_MASKED_LEN {
                return Err(Error::BadManifest(format!(
                    "chunk {}: masked length {} is not one this folder's key masks: the manifest \
                     was not written for this encrypted folder",
                    c.id, c.len
                )));
            }
            Ok(ChunkRef { id: c.id, len })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Manifest {
        Manifest::new(vec![
            ChunkRef {
                id: ChunkId::of(b"a"),
                len: 10,
            },
            ChunkRef {
                id: ChunkId::of(b"b"),
                len: 5,
            },
        ])
    }

    #[test]
    fn encoding_is_stable() {
        let m = sample();
        let enc = m.encode();
        assert_eq!(enc.len(), 13 + 2 * 36);
        assert_eq!(&enc[..13], &[1, 15, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(
            m.id().to_string(),
            ManifestId::of(&enc).to_string(),
            "the id is the hash of the encoding"
        );
        let offsets: Vec<u64> = m.with_offsets().map(|(o, _)| o).collect();
        assert_eq!(offsets, [0, 10]);
    }

    #[test]
    fn decode_rejects_damage_with_reasons() {
        let enc = sample().encode();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (enc[..5].to_vec(), "shorter than the header"),
            ([&[2u8][..], &enc[1..]].concat(), "version 2"),
            (enc[..enc.len() - 1].to_vec(), "need 72 bytes"),
            (
                {
                    let mut e = enc.clone();
                    e[1] = 16;
                    e
                },
                "add up to 15",
            ),
            (
                {
                    let mut e = enc.clone();
                    e[13 + 32..13 + 36].copy_from_slice(&0u32.to_le_bytes());
                    e
                },
                "length 0",
            ),
        ];
        for (bytes, want) in cases {
            let err = Manifest::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }

    #[test]
    fn masked_encoding_hides_lengths_and_decodes_back() {
        let mask = LengthMask::new([9; 32]);
        let plain = sample();
        let masked = sample().masked(mask.clone());
        // Real lengths for the caller.
        assert_eq!(masked.chunks(), plain.chunks());
        assert_eq!(masked.size(), 15);
        let offsets: Vec<u64> = masked.with_offsets().map(|(o, _)| o).collect();
        assert_eq!(offsets, [0, 10]);
        // Masked lengths in the encoding, and so another id.
        let enc = masked.encode();
        assert_ne!(masked.id(), plain.id());
        assert_eq!(masked.id(), ManifestId::of(&enc));
        let a = plain.chunks()[0];
        assert_eq!(
            &enc[13 + 32..13 + 36],
            &mask.apply(&a.id, a.len).to_le_bytes()
        );
        // The server decodes it as any manifest: masked lengths that add up.
        let server = Manifest::decode(&enc).unwrap();
        assert_eq!(server.encode(), enc);
        assert_ne!(server.size(), 15);
        assert_eq!(server.chunks()[0].len, mask.apply(&a.id, a.len));
        // The client gets the real lengths back.
        let back = Manifest::decode_masked(&enc, &mask).unwrap();
        assert_eq!(back, masked);
        assert_eq!(back.id(), masked.id());
        // Another folder's mask does not give real lengths back (or gives others).
        let other = Manifest::decode_masked(&enc, &LengthMask::new([8; 32]));
        assert!(other.map(|m| m.chunks() != plain.chunks()).unwrap_or(true));
        // A plain manifest's encoding is unchanged by this feature.
        assert_eq!(
            &plain.encode()[..13],
            &[1, 15, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
        );
    }

    #[test]
    fn masked_encode_into_matches_encode_across_pieces() {
        let mask = LengthMask::new([1; 32]);
        let m = Manifest::new(
            (0..5000u32)
                .map(|i| ChunkRef {
                    id: ChunkId::of(&i.to_le_bytes()),
                    len: 1 + i * 7,
                })
                .collect(),
        )
        .masked(mask.clone());
        let mut pieces = Vec::new();
        m.encode_into(|p| pieces.extend_from_slice(p));
        assert_eq!(pieces, m.encode());
        assert_eq!(Manifest::decode_masked(&pieces, &mask).unwrap(), m);
    }

    proptest! {
        #[test]
        fn masked_round_trip(
            key in any::<[u8; 32]>(),
            lens in proptest::collection::vec(1u32..=crate::MAX_MASKED_LEN, 0..50),
        ) {
            let mask = LengthMask::new(key);
            let m = Manifest::new(
                lens.iter()
                    .enumerate()
                    .map(|(i, &len)| ChunkRef { id: ChunkId::of(&i.to_le_bytes()), len })
                    .collect(),
            )
            .masked(mask.clone());
            let enc = m.encode();
            prop_assert!(Manifest::decode(&enc).is_ok());
            prop_assert_eq!(Manifest::decode_masked(&enc, &mask).unwrap(), m);
        }

        #[test]
        fn round_trip(lens in proptest::collection::vec(1u32..100_000, 0..200)) {
            let m = Manifest::new(
                lens.iter()
                    .enumerate()
                    .map(|(i, &len)| ChunkRef { id: ChunkId::of(&i.to_le_bytes()), len })
                    .collect(),
            );
            prop_assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Manifest::decode(&bytes);
        }
    }
}
