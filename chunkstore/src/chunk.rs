//! A chunk: bytes together with the id they hash to.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::id::ChunkId;

/// Bytes and their BLAKE3 id. The only ways to make one hash the bytes, so a `Chunk`'s id is
/// always right: stores accept `Chunk`s, never (id, bytes) pairs they would have to trust.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    id: ChunkId,
    data: Bytes,
}

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
}
