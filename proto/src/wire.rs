//! Chunks on the wire: zstd-compressed when that helps, or as a delta against chunks the receiver
//! holds; checked on arrival.

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkId, CompressProbe};

use crate::convert::{ConvertError, ids_from_bytes, ids_to_bytes};
use crate::pb;

/// The most chunks a delta may name as its base.
pub const MAX_DELTA_BASES: usize = 4;

/// A chunk as sent: compressed when that saves at least 1/32 of its size. `raw` must be the bytes
/// of `id` (the receiver checks).
pub fn encode_chunk(id: ChunkId, raw: &Bytes) -> pb::ChunkData {
    chunk_data(id, raw, lbsync_chunkstore::compress_if_smaller(raw))
}

/// [`encode_chunk`] for one of a file's chunks in turn: `probe` skips trying to compress after
/// chunks that did not compress (see [`CompressProbe`]).
pub fn encode_chunk_probed(id: ChunkId, raw: &Bytes, probe: &mut CompressProbe) -> pb::ChunkData {
    chunk_data(id, raw, probe.compress(raw))
}

fn chunk_data(id: ChunkId, raw: &Bytes, compressed: Option<Vec<u8>>) -> pb::ChunkData {
    let (compression, data) = match compressed {
        Some(z) => (pb::Compression::Zstd, Bytes::from(z)),
        None => (pb::Compression::None, raw.clone()),
    };
    pb::ChunkData {
        id: Bytes::copy_from_slice(id.as_bytes()),
        compression: compression.into(),
        raw_len: raw.len() as u32,
        data,
        base_ids: Bytes::new(),
    }
}

/// A chunk as sent to a receiver that holds `base_ids`, whose concatenated bytes are `base`: as
/// a delta against them when that is smaller than [`encode_chunk`]'s choice. At most
/// [`MAX_DELTA_BASES`] ids are used; with none, this is [`encode_chunk`].
pub fn encode_chunk_against(
    id: ChunkId,
    raw: &Bytes,
    base_ids: &[ChunkId],
    base: &[u8],
) -> pb::ChunkData {
    let plain = encode_chunk(id, raw);
    if base_ids.is_empty() || base_ids.len() > MAX_DELTA_BASES {
        return plain;
    }
    match lbsync_chunkstore::compress_against(raw, base) {
        Ok(z) if z.len() < plain.data.len() => pb::ChunkData {
            compression: pb::Compression::Zstd.into(),
            data: Bytes::from(z),
            base_ids: ids_to_bytes(base_ids),
            ..plain
        },
        _ => plain,
    }
}

/// The chunks a received chunk is a delta against: none for a plain chunk, at most
/// [`MAX_DELTA_BASES`].
pub fn chunk_bases(c: &pb::ChunkData) -> Result<Vec<ChunkId>, ConvertError> {
    let ids = ids_from_bytes(&c.base_ids)?;
    if ids.len() > MAX_DELTA_BASES {
        return Err(ConvertError::TooMany {
            what: "delta base chunks",
            count: ids.len(),
            limit: MAX_DELTA_BASES,
        });
    }
    Ok(ids)
}

/// A received plain chunk (a delta is an error: see [`decode_chunk_against`]): decompressed within
/// its declared length (never more than `max_len`) and checked against its id.
pub fn decode_chunk(c: pb::ChunkData, max_len: u32) -> Result<Chunk, ConvertError> {
    decode_chunk_against(c, max_len, None)
}

/// A received chunk, plain or a delta against `base` (the concatenated bytes of
/// [`chunk_bases`]): decompressed within its declared length (never more than `max_len`) and
/// checked against its id.
pub fn decode_chunk_against(
    c: pb::ChunkData,
    max_len: u32,
    base: Option<&[u8]>,
) -> Result<Chunk, ConvertError> {
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
    if c.raw_len == 0 {
        // No chunker makes one (an empty file has no chunks), and no manifest may name one.
        return Err(ConvertError::BadChunk(format!(
            "chunk {id} is empty: a chunk is at least 1 byte, and an empty file has no chunks"
        )));
    }
    let declared = |data: &Bytes| {
        if data.len() == c.raw_len as usize {
            Ok(())
        } else {
            Err(ConvertError::BadChunk(format!(
                "chunk {id} has {} bytes where {} were declared",
                data.len(),
                c.raw_len
            )))
        }
    };
    match pb::Compression::try_from(c.compression) {
        Ok(pb::Compression::None) if !c.base_ids.is_empty() => Err(ConvertError::BadChunk(
            format!("chunk {id} names delta bases but is not zstd: a delta is always compressed"),
        )),
        // The sender found it does not compress, or did not try because the chunks before it
        // did not: the store need not try again.
        Ok(pb::Compression::None) => {
            declared(&c.data)?;
            Ok(Chunk::verify(id, c.data)?.keep_raw())
        }
        Ok(pb::Compression::Zstd) if !c.base_ids.is_empty() => {
            let base = base.ok_or_else(|| {
                ConvertError::BadChunk(format!(
                    "chunk {id} is a delta, but no delta was expected here"
                ))
            })?;
            let data = lbsync_chunkstore::decompress_against(&c.data, base, c.raw_len as usize)
                .map(Bytes::from)
                .map_err(|e| {
                    ConvertError::BadChunk(format!(
                        "chunk {id}: delta does not decompress against its base to at most {} \
                         bytes: {e}",
                        c.raw_len
                    ))
                })?;
            declared(&data)?;
            Ok(Chunk::verify(id, data)?)
        }
        // Kept compressed as it came, for the store.
        Ok(pb::Compression::Zstd) => Ok(Chunk::from_zstd(id, c.data, c.raw_len as usize)?),
        Err(_) => Err(ConvertError::UnknownEnum {
            field: "compression",
            value: c.compression,
        }),
    }
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

        let mut short = encode_chunk(abc.id(), abc.data());
        short.raw_len = 2;
        let err = decode_chunk(short, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("3 bytes where 2 were declared"), "{err}");
    }

    #[test]
    fn deltas_round_trip_against_their_base_only() {
        let lines: String = (0..400u64)
            .map(|i| format!("let v{i} = {};\n", i.wrapping_mul(0x9e37_79b9) % 100_003))
            .collect();
        let old = Chunk::new(lines.into_bytes());
        let mut text = old.data().to_vec();
        text.splice(3000..3000, *b"    // patched\n");
        let new = Chunk::new(text);
        let wire = encode_chunk_against(new.id(), new.data(), &[old.id()], old.data());
        assert_eq!(chunk_bases(&wire).unwrap(), [old.id()]);
        assert!(
            wire.data.len() < encode_chunk(new.id(), new.data()).data.len(),
            "a delta is chosen when it is smaller"
        );
        let back = decode_chunk_against(wire.clone(), 1 << 20, Some(old.data())).unwrap();
        assert_eq!(back, new);

        let err = decode_chunk(wire.clone(), 1 << 20).unwrap_err().to_string();
        assert!(err.contains("no delta was expected"), "{err}");
        let err = decode_chunk_against(wire.clone(), 1 << 20, Some(b"another base"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk"), "{err}");
        let mut raw_delta = wire.clone();
        raw_delta.compression = pb::Compression::None.into();
        let err = decode_chunk_against(raw_delta, 1 << 20, Some(old.data()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a delta is always compressed"), "{err}");
        let mut many = wire;
        many.base_ids = ids_to_bytes(&[old.id(); MAX_DELTA_BASES + 1]);
        let err = chunk_bases(&many).unwrap_err().to_string();
        assert!(err.contains("5 delta base chunks, the limit is 4"), "{err}");

        // Noise does not delta-compress: the plain encoding is kept.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let noise = Chunk::new(noise);
        let plain = encode_chunk_against(noise.id(), noise.data(), &[old.id()], old.data());
        assert!(plain.base_ids.is_empty());
    }
}
