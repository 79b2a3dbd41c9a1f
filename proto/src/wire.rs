//! Chunks on the wire: zstd-compressed when that helps, checked on arrival.

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkId};

use crate::convert::ConvertError;
use crate::pb;

/// A chunk as sent: compressed when that saves at least 1/32 of its size. `raw` must be the bytes
/// of `id` (the receiver checks).
pub fn encode_chunk(id: ChunkId, raw: &Bytes) -> pb::ChunkData {
    let compressed = lbsync_chunkstore::compress_if_smaller(raw);
    let (compression, data) = match compressed {
        Some(z) => (pb::Compression::Zstd, Bytes::from(z)),
        None => (pb::Compression::None, raw.clone()),
    };
    pb::ChunkData {
        id: Bytes::copy_from_slice(id.as_bytes()),
        compression: compression.into(),
        raw_len: raw.len() as u32,
        data,
    }
}

/// A received chunk: decompressed within its declared length (never more than `max_len`) and
/// checked against its id.
pub fn decode_chunk(c: pb::ChunkData, max_len: u32) -> Result<Chunk, ConvertError> {
    let id = ChunkId::from_slice(&c.id).ok_or(ConvertError::BadLength {
        field: "chunk id",
        len: c.id.len(),
        expected: "32".into(),
    })?;
    if c.raw_len > max_len {
        return Err(ConvertError::BadChunk(format!(
            "chunk {id} is {} bytes, over the maximum chunk size {max_len}: chunk with the server's parameters",
            c.raw_len
        )));
    }
    let data = match pb::Compression::try_from(c.compression) {
        Ok(pb::Compression::None) => c.data,
        Ok(pb::Compression::Zstd) => lbsync_chunkstore::decompress(&c.data, c.raw_len as usize)
            .map(Bytes::from)
            .map_err(|e| {
                ConvertError::BadChunk(format!(
                    "chunk {id}: zstd data does not decompress to at most {} bytes: {e}",
                    c.raw_len
                ))
            })?,
        Err(_) => {
            return Err(ConvertError::UnknownEnum {
                field: "compression",
                value: c.compression,
            });
        }
    };
    if data.len() != c.raw_len as usize {
        return Err(ConvertError::BadChunk(format!(
            "chunk {id} has {} bytes where {} were declared",
            data.len(),
            c.raw_len
        )));
    }
    Ok(Chunk::verify(id, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let text = Chunk::new(b"lbsync ".repeat(1000));
        let wire = encode_chunk(text.id(), text.data());
        assert_eq!(wire.compression, pb::Compression::Zstd as i32);
        assert!(wire.data.len() < 200);
        assert_eq!(decode_chunk(wire.clone(), 1 << 20).unwrap(), text);

        let too_big = decode_chunk(wire.clone(), 100).unwrap_err().to_string();
        assert!(too_big.contains("over the maximum chunk size"), "{too_big}");

        let mut lying = wire.clone();
        lying.raw_len = 10; // a zip bomb declares little and inflates a lot
        assert!(decode_chunk(lying, 1 << 20).is_err());

        let abc = Chunk::new(&b"abc"[..]);
        let mut wrong = encode_chunk(abc.id(), abc.data());
        wrong.data = Bytes::from_static(b"abd");
        let err = decode_chunk(wrong, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("do not match their id"), "{err}");
    }
}
