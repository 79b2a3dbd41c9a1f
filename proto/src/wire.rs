//! Chunks on the wire: zstd-compressed when that helps, or as a delta against chunks the receiver
//! holds; checked on arrival.

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkId, CompressProbe, STRONG_LEN, Signature};

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

/// A chunk as sent, uncompressed: for a message whose chunks are compressed together
/// ([`pack_together`]).
pub fn raw_chunk(id: ChunkId, raw: &Bytes) -> pb::ChunkData {
    chunk_data(id, raw, None)
}

/// Whether `c` is sent whole and uncompressed, so may go in a message's `together` frame.
pub fn goes_together(c: &pb::ChunkData) -> bool {
    c.compression == i32::from(pb::Compression::None) && c.base_ids.is_empty() && c.raw_len > 0
}

/// Moves the bytes of `msg`'s whole, uncompressed chunks into one zstd frame,
/// `msg.together` (`PutChunksRequest.together`), and drops their ids (the receiver hashes the
/// bytes), when that saves at least 1/32 of them; else leaves `msg` as it is. Only for a server
/// whose handshake says `chunks_together`.
pub fn pack_together(msg: &mut pb::PutChunksRequest) -> std::io::Result<()> {
    pack(
        &mut msg.chunks,
        &mut msg.together,
        lbsync_chunkstore::TOGETHER_LEVEL,
    )
    .map(drop)
}

/// Inverts [`pack_together`] on arrival: gives the chunks whose bytes `msg.together` holds their
/// `data` (and, those sent without one, the id of those bytes), and says which they are. The
/// frame must decode to exactly their declared lengths, which add up to at most `limit`.
pub fn unpack_together(
    msg: &mut pb::PutChunksRequest,
    limit: u64,
) -> Result<Vec<bool>, ConvertError> {
    unpack(
        &mut msg.chunks,
        &mut msg.together,
        limit,
        Ids::Hash,
        "PutChunks",
    )
}

/// [`pack_together`] for a `GetChunks` answer (`GetChunksResponse.together`, to a client that
/// asked with `GetChunksRequest.together`), at a level a server can afford for every download.
/// The ids of the chunks moved into the frame are dropped too: the answer is in request order,
/// and the client names each chunk by the id it asked for at that place, which its bytes must
/// hash to. Says whether it packed (else the caller compresses the chunks one by one).
pub fn pack_answer_together(msg: &mut pb::GetChunksResponse) -> std::io::Result<bool> {
    pack(
        &mut msg.chunks,
        &mut msg.together,
        lbsync_chunkstore::DOWNLOAD_TOGETHER_LEVEL,
    )
}

/// Inverts [`pack_answer_together`]: the chunks in the frame get their bytes, and keep their
/// empty ids for the caller to fill in from the request's order. The frame must decode to
/// exactly their declared lengths, which add up to at most `limit`.
pub fn unpack_answer_together(
    msg: &mut pb::GetChunksResponse,
    limit: u64,
) -> Result<(), ConvertError> {
    unpack(
        &mut msg.chunks,
        &mut msg.together,
        limit,
        Ids::Keep,
        "GetChunks",
    )
    .map(drop)
}

/// The chunks `pack` may move into a frame: whole and uncompressed, bytes present.
fn packable(c: &pb::ChunkData) -> bool {
    goes_together(c) && c.data.len() == c.raw_len as usize
}

fn pack(chunks: &mut [pb::ChunkData], together: &mut Bytes, level: i32) -> std::io::Result<bool> {
    let pieces: Vec<&[u8]> = chunks
        .iter()
        .filter(|c| packable(c))
        .map(|c| &c.data[..])
        .collect();
    let raw: usize = pieces.iter().map(|p| p.len()).sum();
    if pieces.len() < 2 {
        return Ok(false);
    }
    let frame = lbsync_chunkstore::compress_together_at(&pieces, level)?;
    if frame.len() >= raw - raw / 32 {
        return Ok(false);
    }
    for c in chunks.iter_mut().filter(|c| packable(c)) {
        c.data = Bytes::new();
        // The receiver hashes the bytes anyway: the id would only be checked against them.
        c.id = Bytes::new();
    }
    *together = Bytes::from(frame);
    Ok(true)
}

/// What [`unpack`] does for the chunks that came without an id.
enum Ids {
    /// Name them by the BLAKE3 of their bytes (an upload: the server stores what came).
    Hash,
    /// Leave them empty (an answer: the client names them by what it asked).
    Keep,
}

fn unpack(
    chunks: &mut [pb::ChunkData],
    together: &mut Bytes,
    limit: u64,
    ids: Ids,
    rpc: &str,
) -> Result<Vec<bool>, ConvertError> {
    let inside: Vec<bool> = chunks
        .iter()
        .map(|c| !together.is_empty() && goes_together(c) && c.data.is_empty())
        .collect();
    if together.is_empty() {
        return Ok(inside);
    }
    let total: u64 = chunks
        .iter()
        .zip(&inside)
        .filter(|(_, i)| **i)
        .map(|(c, _)| u64::from(c.raw_len))
        .sum();
    let bad =
        |why: String| ConvertError::BadChunk(format!("a {rpc} message's together frame {why}"));
    if total > limit {
        return Err(bad(format!(
            "declares {total} bytes, over the {limit} allowed"
        )));
    }
    let raw = lbsync_chunkstore::decompress(together, total as usize)
        .map_err(|e| bad(format!("does not decode to at most {total} bytes: {e}")))?;
    if raw.len() as u64 != total {
        return Err(bad(format!(
            "decodes to {} bytes where its chunks declare {total}",
            raw.len()
        )));
    }
    let raw = Bytes::from(raw);
    let mut at = 0;
    for (c, _) in chunks.iter_mut().zip(&inside).filter(|(_, i)| **i) {
        let len = c.raw_len as usize;
        c.data = raw.slice(at..at + len);
        at += len;
        if c.id.is_empty() && matches!(ids, Ids::Hash) {
            c.id = Bytes::copy_from_slice(ChunkId::of(&c.data).as_bytes());
        }
    }
    *together = Bytes::new();
    Ok(inside)
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

/// A chunk's [`Signature`] as GetSignatures answers it.
pub fn signature_to_pb(s: &Signature) -> pb::ChunkSignature {
    pb::ChunkSignature {
        len: s.len,
        block_size: s.block_size,
        weak: s.weak.iter().flat_map(|w| w.to_le_bytes()).collect(),
        strong: s.strong.iter().flatten().copied().collect(),
        strong_len: STRONG_LEN as u32,
    }
}

/// A signature off the wire, checked: `None` for a chunk the server does not hold (length 0).
/// Only strong hashes of [`STRONG_LEN`] bytes are taken (the only length lbsync makes).
pub fn signature_from_pb(s: &pb::ChunkSignature) -> Result<Option<Signature>, ConvertError> {
    if s.len == 0 {
        return Ok(None);
    }
    let bad = |why: String| ConvertError::BadChunk(format!("a chunk signature {why}"));
    if s.strong_len as usize != STRONG_LEN {
        return Err(bad(format!(
            "has strong hashes of {} bytes, not {STRONG_LEN}",
            s.strong_len
        )));
    }
    if !s.weak.len().is_multiple_of(4) || !s.strong.len().is_multiple_of(STRONG_LEN) {
        return Err(bad("has sums of a partial block".into()));
    }
    let sig = Signature {
        len: s.len,
        block_size: s.block_size,
        weak: s
            .weak
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect(),
        strong: s
            .strong
            .chunks_exact(STRONG_LEN)
            .map(|h| {
                let mut out = [0u8; STRONG_LEN];
                out.copy_from_slice(h);
                out
            })
            .collect(),
    };
    sig.check().map_err(|e| bad(e.to_string()))?;
    Ok(Some(sig))
}

/// A chunk as a block delta (`COMPRESSION_BLOCK_DELTA`) against chunks the receiver holds
/// (`base_ids`, described by `sigs`, in order), when that is smaller than `plain_len` by at
/// least 1/32; else `None`. Only to a server whose handshake says `block_deltas`.
pub fn encode_block_delta(
    id: ChunkId,
    raw: &[u8],
    base_ids: &[ChunkId],
    sigs: &[Signature],
    plain_len: usize,
) -> Option<pb::ChunkData> {
    if base_ids.is_empty() || base_ids.len() > MAX_DELTA_BASES || base_ids.len() != sigs.len() {
        return None;
    }
    let ops = lbsync_chunkstore::block_delta(raw, sigs);
    if ops.len() > lbsync_chunkstore::max_ops_len(raw.len(), sigs.len()) {
        return None;
    }
    let z = lbsync_chunkstore::compress_frame(&ops).ok()?;
    (z.len() < plain_len - plain_len / 32).then(|| pb::ChunkData {
        id: Bytes::copy_from_slice(id.as_bytes()),
        compression: pb::Compression::BlockDelta.into(),
        raw_len: raw.len() as u32,
        data: Bytes::from(z),
        base_ids: ids_to_bytes(base_ids),
    })
}

/// A received block delta (`COMPRESSION_BLOCK_DELTA`), rebuilt on the bytes of its bases (in
/// `base_ids` order) and checked against its id: ops within their bound, exactly `raw_len`
/// (at most `max_len`) bytes.
pub fn decode_block_delta(
    c: pb::ChunkData,
    max_len: u32,
    bases: &[&[u8]],
) -> Result<Chunk, ConvertError> {
    let id = ChunkId::from_slice(&c.id).ok_or(ConvertError::BadLength {
        field: "chunk id",
        len: c.id.len(),
        expected: "32".into(),
    })?;
    if c.compression != i32::from(pb::Compression::BlockDelta) {
        return Err(ConvertError::BadChunk(format!(
            "chunk {id} is not a block delta"
        )));
    }
    if c.raw_len == 0 || c.raw_len > max_len {
        return Err(ConvertError::BadChunk(format!(
            "chunk {id} declares {} bytes, not 1..={max_len}: chunk with the server's parameters",
            c.raw_len
        )));
    }
    let bad = |why: String| {
        ConvertError::BadChunk(format!(
            "chunk {id}: block delta {why}; send the chunk whole"
        ))
    };
    let limit = lbsync_chunkstore::max_ops_len(c.raw_len as usize, bases.len());
    let ops = lbsync_chunkstore::decompress(&c.data, limit).map_err(|e| {
        bad(format!(
            "does not decode to at most {limit} bytes of ops: {e}"
        ))
    })?;
    let raw = lbsync_chunkstore::apply_block_delta(&ops, bases, c.raw_len as usize)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Chunk::verify(id, Bytes::from(raw))?)
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
        Ok(pb::Compression::BlockDelta) => Err(ConvertError::BadChunk(format!(
            "chunk {id} is a block delta, which only an upload to a server that says \
             block_deltas may carry"
        ))),
        Err(_) => Err(ConvertError::UnknownEnum {
            field: "compression",
            value: c.compression,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of xorshift64 noise from `seed`: incompressible test data.
    fn xorshift(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn text_chunks(n: usize) -> Vec<Chunk> {
        (0..n)
            .map(|i| {
                Chunk::new(
                    format!("import os\nimport sys\n\ndef f{i}(x):\n    return x\n").repeat(4),
                )
            })
            .collect()
    }

    #[test]
    fn chunks_packed_together_unpack_to_themselves_and_deltas_stay_apart() {
        let chunks = text_chunks(50);
        let mut msg = pb::PutChunksRequest {
            chunks: chunks.iter().map(|c| raw_chunk(c.id(), c.data())).collect(),
            ..Default::default()
        };
        let zstd_one = encode_chunk(chunks[0].id(), chunks[0].data());
        msg.chunks.push(zstd_one.clone());
        let raw: usize = chunks.iter().map(Chunk::len).sum();
        pack_together(&mut msg).unwrap();
        assert!(
            !msg.together.is_empty() && msg.together.len() * 10 < raw,
            "{}",
            msg.together.len()
        );
        assert!(
            msg.chunks[..50]
                .iter()
                .all(|c| c.data.is_empty() && c.id.is_empty())
        );
        assert_eq!(
            msg.chunks[50], zstd_one,
            "a compressed chunk is not repacked"
        );

        let inside = unpack_together(&mut msg, 1 << 20).unwrap();
        assert_eq!(inside.iter().filter(|i| **i).count(), 50);
        assert!(!inside[50]);
        for (c, wire) in chunks.iter().zip(&msg.chunks) {
            assert_eq!(&decode_chunk(wire.clone(), 1 << 20).unwrap(), c);
        }
    }

    #[test]
    fn a_together_frame_that_lies_about_its_length_or_amplifies_is_refused() {
        let chunks = text_chunks(10);
        let packed = || {
            let mut msg = pb::PutChunksRequest {
                chunks: chunks.iter().map(|c| raw_chunk(c.id(), c.data())).collect(),
                ..Default::default()
            };
            pack_together(&mut msg).unwrap();
            msg
        };
        let mut short = packed();
        short.chunks[3].raw_len += 1;
        let e = unpack_together(&mut short, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("decodes to"), "{e}");
        let mut long = packed();
        long.chunks[3].raw_len -= 1;
        let e = unpack_together(&mut long, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("does not decode"), "{e}");
        let mut over = packed();
        let e = unpack_together(&mut over, 100).unwrap_err().to_string();
        assert!(e.contains("over the 100 allowed"), "{e}");
        let mut garbage = packed();
        garbage.together = Bytes::from_static(b"not zstd at all");
        assert!(unpack_together(&mut garbage, 1 << 20).is_err());
        // A chunk that names its id, and whose bytes came wrong out of the frame, fails its id
        // check.
        let mut swapped = packed();
        for (c, chunk) in swapped.chunks.iter_mut().zip(&chunks) {
            c.id = Bytes::copy_from_slice(chunk.id().as_bytes());
        }
        swapped.chunks.swap(0, 1);
        swapped.chunks[0].raw_len = chunks[1].len() as u32;
        unpack_together(&mut swapped, 1 << 20).unwrap();
        assert!(decode_chunk(swapped.chunks[0].clone(), 1 << 20).is_err());
    }

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
        let noise = Chunk::new(xorshift(5000, 0x9e37_79b9_7f4a_7c15));
        let plain = encode_chunk_against(noise.id(), noise.data(), &[old.id()], old.data());
        assert!(plain.base_ids.is_empty());
    }

    #[test]
    fn block_deltas_round_trip_through_their_signature_and_refuse_what_does_not_fit() {
        let old = Chunk::new(xorshift(8192, 7));
        let mut edited = old.data().to_vec();
        edited.insert(4000, b'!');
        let new = Chunk::new(edited);
        let sig = signature_from_pb(&signature_to_pb(&Signature::of(old.data())))
            .unwrap()
            .unwrap();
        let wire =
            encode_block_delta(new.id(), new.data(), &[old.id()], &[sig], new.len()).unwrap();
        assert!(wire.data.len() < 400, "{} bytes", wire.data.len());
        assert_eq!(chunk_bases(&wire).unwrap(), [old.id()]);
        let back = decode_block_delta(wire.clone(), 1 << 20, &[old.data()]).unwrap();
        assert_eq!(back, new);

        let e = decode_chunk_against(wire.clone(), 1 << 20, Some(old.data()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only an upload"), "{e}");
        let e = decode_block_delta(wire.clone(), 1 << 20, &[b"another base".as_slice()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("send the chunk whole"), "{e}");
        let mut short = wire.clone();
        short.raw_len -= 1;
        let e = decode_block_delta(short, 1 << 20, &[old.data()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the declared"), "{e}");
        let mut wrong = wire.clone();
        wrong.id = Bytes::copy_from_slice(old.id().as_bytes());
        let e = decode_block_delta(wrong, 1 << 20, &[old.data()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not match their id"), "{e}");
        let e = decode_block_delta(wire.clone(), 100, &[old.data()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not 1..=100"), "{e}");
        // A frame that inflates past the ops' bound is refused before it is applied.
        let mut bomb = wire;
        bomb.data = Bytes::from(lbsync_chunkstore::compress_frame(&vec![0u8; 1 << 20]).unwrap());
        let e = decode_block_delta(bomb, 1 << 20, &[old.data()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not decode to at most"), "{e}");
        // Noise against an unrelated base is not worth a delta.
        let sig = Signature::of(b"unrelated base bytes, unrelated".as_slice());
        assert!(encode_block_delta(new.id(), new.data(), &[old.id()], &[sig], new.len()).is_none());
    }
}
