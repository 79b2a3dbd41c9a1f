//! A chunk: bytes together with the id they hash to.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::id::ChunkId;

/// Bytes and their BLAKE3 id. The only ways to make one hash the bytes, so a `Chunk`'s id is
/// always right: stores accept `Chunk`s, never (id, bytes) pairs they would have to trust.
///
/// A chunk that arrived compressed, or that its sender found does not compress, carries that
/// knowledge ([`Chunk::from_zstd`], [`Chunk::keep_raw`]), so a store does not compress it again.
#[derive(Clone)]
pub struct Chunk {
    id: ChunkId,
    data: Bytes,
    packed: Packed,
}

/// What is known of how a chunk compresses; it decides how a store keeps the chunk, never its
/// bytes or id.
#[derive(Clone, Debug, Default)]
pub(crate) enum Packed {
    /// Nobody tried: the store tries.
    #[default]
    Unknown,
    /// Keep it as it is: its sender found it does not compress (or chose not to try).
    Raw,
    /// This zstd frame decompresses to the chunk's bytes (checked when the chunk was made).
    Zstd(Bytes),
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.data == other.data
    }
}

impl Eq for Chunk {}

impl Chunk {
    /// The chunk as a manifest names it: id and length.
    pub fn chunk_ref(&self) -> crate::ChunkRef {
        crate::ChunkRef {
            id: self.id(),
            len: self.len() as u32,
        }
    }

    /// Hashes `data` and wraps it.
    pub fn new(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            id: ChunkId::of(&data),
            data,
            packed: Packed::Unknown,
        }
    }

    /// Hashes `data` and checks it against the id it was sent under.
    pub fn verify(claimed: ChunkId, data: impl Into<Bytes>) -> Result<Self> {
        let chunk = Self::new(data);
        if chunk.id == claimed {
            Ok(chunk)
        } else {
            Err(Error::HashMismatch {
                claimed,
                actual: chunk.id,
            })
        }
    }

    /// Decompresses `frame` (zstd, at most `raw_len` bytes and exactly that many) and checks the
    /// bytes against the id they were sent under. The chunk keeps the frame: a store writes it as
    /// it is instead of compressing the bytes again.
    pub fn from_zstd(claimed: ChunkId, frame: Bytes, raw_len: usize) -> Result<Self> {
        let bad = |what: String| Error::BadCompression { id: claimed, what };
        let data = crate::compress::decompress(&frame, raw_len).map_err(|e| {
            bad(format!(
                "it does not decompress to at most {raw_len} bytes: {e}"
            ))
        })?;
        if data.len() != raw_len {
            return Err(bad(format!(
                "it decompresses to {} bytes where {raw_len} were declared",
                data.len()
            )));
        }
        let mut chunk = Self::verify(claimed, data)?;
        chunk.packed = Packed::Zstd(frame);
        Ok(chunk)
    }

    /// Marks the chunk as not worth compressing (its sender tried, or knows its kind of data): a
    /// store keeps it raw without trying.
    pub fn keep_raw(mut self) -> Self {
        self.packed = Packed::Raw;
        self
    }

    /// Marks the chunk as not yet tried for compression (it came compressed with others, whose
    /// frame a store cannot keep): a store compresses it on its own if that pays.
    pub fn compress_when_stored(mut self) -> Self {
        self.packed = Packed::Unknown;
        self
    }

    pub(crate) fn packed(&self) -> &Packed {
        &self.packed
    }

    /// The chunk's id.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// The chunk's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The chunk's bytes, by value.
    pub fn into_data(self) -> Bytes {
        self.data
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the chunk holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({:?}, {} bytes)", self.id, self.data.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_rejects_wrong_id_naming_both() {
        let good = Chunk::new(&b"hello"[..]);
        assert_eq!(Chunk::verify(good.id(), &b"hello"[..]).unwrap(), good);
        let err = Chunk::verify(good.id(), &b"hellO"[..]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&good.id().to_string()), "{msg}");
        assert!(matches!(err, Error::HashMismatch { .. }));
    }

    #[test]
    fn a_zstd_frame_is_checked_like_raw_bytes() {
        let text = Bytes::from(b"a compressible line of text\n".repeat(100));
        let frame = Bytes::from(crate::compress_if_smaller(&text).unwrap());
        let id = ChunkId::of(&text);
        let c = Chunk::from_zstd(id, frame.clone(), text.len()).unwrap();
        assert_eq!(c, Chunk::new(text.clone()));
        assert!(matches!(c.packed(), Packed::Zstd(f) if *f == frame));

        let err = Chunk::from_zstd(ChunkId::of(b"other"), frame.clone(), text.len()).unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
        for declared in [text.len() - 1, text.len() + 1] {
            let err = Chunk::from_zstd(id, frame.clone(), declared).unwrap_err();
            assert!(matches!(err, Error::BadCompression { .. }), "{err}");
        }
        let err = Chunk::from_zstd(id, Bytes::from_static(b"not zstd"), 10).unwrap_err();
        assert!(err.to_string().contains("does not decompress"), "{err}");
    }
}
