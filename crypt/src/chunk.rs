//! Sealed chunks: deterministic authenticated encryption of a chunk's bytes, block by block.
//!
//! ```text
//! blocks = FastCDC v2020 cuts of pt (no normalization; min 64, average 512, most 2048 bytes)
//! for each block b:
//!   z    = 1 when b looks compressible (a byte histogram of its head) and zstd(b) saves >= 1/32
//!   body = zstd(b) if z else b
//!   ct, tag = AES-256-GCM-SIV(chunk block key, nonce = 0^12, ad = "lbsync chunk v2" || [z], body)
//!   rec  = uleb128(len(body) << 1 | z) || tag(16) || ct
//! sealed = 0x02 || rec ...                  (no record for an empty chunk)
//! id     = blake3(sealed)
//! ```
//!
//! Why blocks: equal plaintext blocks seal to equal bytes wherever they sit, because each is
//! sealed on its own and nothing of its position goes in. So an edited chunk and the chunk it
//! replaced share all their sealed blocks but the edited ones, and the server, which holds both
//! as sealed bytes, can send the new one as the zstd delta against the old that it sends for plain
//! chunks (`ChunkData.base_ids`): it costs the edited blocks, about 512 bytes for a small edit,
//! not the whole chunk. Each block is a function of its plaintext alone, the compression decision
//! included, so the same block seals the same in every chunk it appears in.
//!
//! The nonce is fixed on purpose: AES-GCM-SIV is misuse-resistant (RFC 8452), so a repeated nonce
//! reveals only that two blocks with the same flag and bytes are equal, which is the equality
//! dedup needs, and makes it a deterministic AEAD. A block is authenticated by its tag; a chunk as
//! a whole (which blocks, in which order) by its id, which the authenticated manifest names.
//!
//! Chunks sealed in format 1 (one XChaCha20-Poly1305 over the whole chunk, by lbsync before
//! blocks) still open:
//!
//! ```text
//! nonce  = keyed_hash(chunk nonce key, pt)[..24]
//! body   = 0x00 || pt | 0x01 || zstd(pt)
//! sealed = 0x01 || nonce || XChaCha20-Poly1305(chunk aead key, nonce, body, aad = "lbsync chunk v1")
//! ```

use std::cell::RefCell;

use aes_gcm_siv::Aes256GcmSiv;
use bytes::Bytes;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use lbsync_chunkstore::ChunkId;

use crate::error::{Result, tampered};
use crate::siv::FixedNonce;

/// The format byte of a chunk sealed now (block by block).
pub const CHUNK_FORMAT: u8 = 2;
/// The format byte of a chunk sealed whole, by lbsync before blocks: still opened.
pub const CHUNK_FORMAT_V1: u8 = 1;
/// The associated data of every block of a format-2 chunk (with its compression flag).
pub const CHUNK_AAD: &[u8] = b"lbsync chunk v2";
/// The AEAD's associated data for format-1 chunks.
pub const CHUNK_AAD_V1: &[u8] = b"lbsync chunk v1";
/// Nonce length (XChaCha20-Poly1305, format 1).
pub(crate) const NONCE_LEN: usize = 24;
/// Tag length (Poly1305 in format 1, POLYVAL-based in format 2).
pub(crate) const TAG_LEN: usize = 16;
/// The smallest, average and largest block of a format-2 chunk (the last may be shorter).
pub const BLOCK_MIN: usize = 64;
/// See [`BLOCK_MIN`].
pub const BLOCK_AVG: usize = 512;
/// See [`BLOCK_MIN`].
pub const BLOCK_MAX: usize = 2048;
/// The most a block's record adds to its body: a two-byte length (bodies are at most
/// [`BLOCK_MAX`]) and the tag.
pub const BLOCK_OVERHEAD: usize = 2 + TAG_LEN;

/// The longest a sealed chunk of `len` plaintext bytes can be: the format byte and a record per
/// block, every block but the last at least [`BLOCK_MIN`] long, no body longer than its block.
/// Within `lbsync_proto::convert::max_sealed_chunk`.
pub const fn max_sealed_len(len: usize) -> usize {
    1 + (len / BLOCK_MIN + 1) * BLOCK_OVERHEAD + len
}

/// zstd level for block bodies. Part of the format in practice: another level gives other sealed
/// bytes for the same plaintext (still correct, but no dedup against chunks sealed before).
const ZSTD_LEVEL: i32 = 1;
/// A block's compressibility is judged from this many of its first bytes.
const SAMPLE: usize = 512;

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn zstd_compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        c.as_mut()?.compress(data).ok()
    })
}

fn zstd_decompress(data: &[u8], max_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut().expect("just made").decompress(data, max_len)
    })
}

fn pays(compressed: usize, raw: usize) -> bool {
    compressed < raw - raw / 32
}

/// Whether a block's head looks compressible: its byte histogram's sum of squared counts (the
/// chance two bytes are equal, times n²) is at least twice what random bytes give. Random and
/// already-compressed data fail at the cost of one pass over [`SAMPLE`] bytes; text, source code,
/// base64 and hex pass. Integers only, so every machine decides alike.
fn looks_compressible(b: &[u8]) -> bool {
    let head = &b[..b.len().min(SAMPLE)];
    let n = head.len() as u64;
    if n < 64 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &x in head {
        counts[x as usize] += 1;
    }
    let squares: u64 = counts.iter().map(|&c| u64::from(c) * u64::from(c)).sum();
    // Random bytes: E[sum c²] = n + n(n-1)/256.
    squares * 256 >= 2 * (n * 256 + n * (n - 1))
}

/// The compressed body of block `b`, when compressing pays. A function of `b` alone.
pub(crate) fn compressed(b: &[u8]) -> Option<Vec<u8>> {
    if !looks_compressible(b) {
        return None;
    }
    zstd_compress(b).filter(|z| pays(z.len(), b.len()))
}

/// The blocks of a chunk's plaintext: content-defined, so an edit moves the cuts near it only.
/// Without normalization and with a small minimum, a cut depends on the 64 bytes before it and
/// little on where the block began, so the cuts of a chunk that starts elsewhere in the file (a
/// file-level cut moved by an edit) fall on the old ones after the first block.
pub(crate) fn blocks(pt: &[u8]) -> impl Iterator<Item = &[u8]> {
    fastcdc::v2020::FastCDC::with_level(
        pt,
        BLOCK_MIN,
        BLOCK_AVG,
        BLOCK_MAX,
        fastcdc::v2020::Normalization::Level0,
    )
    .map(move |c| &pt[c.offset..c.offset + c.length])
}

/// A sealed chunk: the bytes the server stores, and their id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedChunk {
    /// `blake3(bytes)`: the id the server stores it under and manifests name.
    pub id: ChunkId,
    /// The sealed bytes.
    pub bytes: Bytes,
}

/// Appends `v` as a ULEB128.
pub(crate) fn push_uleb128(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A ULEB128 of at most `most` bytes (at most 10) at the start of `b`: the value and its length.
pub(crate) fn read_uleb128(b: &[u8], most: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &x) in b.iter().take(most.min(10)).enumerate() {
        v |= u64::from(x & 0x7f).checked_shl(7 * i as u32)?;
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The fixed nonce of format-2 blocks (see the module's doc).
const BLOCK_NONCE: [u8; 12] = [0; 12];

/// The associated data of a block: [`CHUNK_AAD`] and its compression flag.
fn block_aad(flag: u8) -> [u8; CHUNK_AAD.len() + 1] {
    let mut aad = [0u8; CHUNK_AAD.len() + 1];
    aad[..CHUNK_AAD.len()].copy_from_slice(CHUNK_AAD);
    aad[CHUNK_AAD.len()] = flag;
    aad
}

pub(crate) fn seal(sealer: &FixedNonce, pt: &[u8]) -> SealedChunk {
    let mut buf = Vec::with_capacity(max_sealed_len(pt.len()));
    buf.push(CHUNK_FORMAT);
    for b in blocks(pt) {
        let z = compressed(b);
        let flag = u8::from(z.is_some());
        let body = z.as_deref().unwrap_or(b);
        push_uleb128(&mut buf, (body.len() as u64) << 1 | u64::from(flag));
        let at = buf.len();
        buf.extend_from_slice(&[0; TAG_LEN]);
        buf.extend_from_slice(body);
        let tag = sealer.seal_in_place(&block_aad(flag), &mut buf[at + TAG_LEN..]);
        buf[at..at + TAG_LEN].copy_from_slice(&tag);
    }
    SealedChunk {
        id: ChunkId::of(&buf),
        bytes: Bytes::from(buf),
    }
}

/// Opens a sealed chunk of either format (see the module's doc), checking the id first.
pub(crate) fn open(
    cipher: &Aes256GcmSiv,
    v1: (&XChaCha20Poly1305, &[u8; 32]),
    id: &ChunkId,
    sealed: &[u8],
    max_len: usize,
) -> Result<Vec<u8>> {
    let fail = |why: &str| tampered(format!("chunk {id}: {why}"));
    if ChunkId::of(sealed) != *id {
        return Err(fail("its bytes do not hash to its id"));
    }
    match sealed.first() {
        Some(&CHUNK_FORMAT) => open_blocks(cipher, &sealed[1..], max_len).map_err(|w| fail(&w)),
        Some(&CHUNK_FORMAT_V1) => open_v1(v1.0, v1.1, sealed, max_len).map_err(|w| fail(&w)),
        Some(other) => Err(fail(&format!(
            "format {other} is unknown (a newer lbsync would say so in the folder; upgrade if one \
             wrote it)"
        ))),
        None => Err(fail("it is empty")),
    }
}

fn open_blocks(cipher: &Aes256GcmSiv, mut rest: &[u8], max_len: usize) -> Result<Vec<u8>, String> {
    use aes_gcm_siv::aead::AeadInPlace as _;
    let mut pt = Vec::new();
    while !rest.is_empty() {
        let (v, n) = read_uleb128(rest, 3).ok_or("a block's length is cut off or too long")?;
        let (len, flag) = ((v >> 1) as usize, (v & 1) as u8);
        if len > BLOCK_MAX {
            return Err(format!(
                "a block of {len} bytes is longer than any ({BLOCK_MAX})"
            ));
        }
        rest = &rest[n..];
        if rest.len() < TAG_LEN + len {
            return Err("its last block is cut off".into());
        }
        let (tag, body) = rest[..TAG_LEN + len].split_at(TAG_LEN);
        let mut body = body.to_vec();
        cipher
            .decrypt_in_place_detached(
                (&BLOCK_NONCE).into(),
                &block_aad(flag),
                &mut body,
                aes_gcm_siv::Tag::from_slice(tag),
            )
            .map_err(|_| "a block fails authentication".to_string())?;
        rest = &rest[TAG_LEN + len..];
        let room = max_len.saturating_sub(pt.len());
        if flag == 1 {
            let b = zstd_decompress(&body, room.min(BLOCK_MAX))
                .map_err(|e| format!("a block does not decompress to at most {room} bytes: {e}"))?;
            pt.extend_from_slice(&b);
        } else {
            if body.len() > room {
                return Err(format!("it holds more than the {max_len} bytes expected"));
            }
            pt.extend_from_slice(&body);
        }
    }
    Ok(pt)
}

fn open_v1(
    aead: &XChaCha20Poly1305,
    nonce_key: &[u8; 32],
    sealed: &[u8],
    max_len: usize,
) -> Result<Vec<u8>, String> {
    const OVERHEAD_V1: usize = 1 + NONCE_LEN + 1 + TAG_LEN;
    if sealed.len() < OVERHEAD_V1 {
        return Err(format!(
            "{} bytes is shorter than any sealed chunk ({OVERHEAD_V1})",
            sealed.len()
        ));
    }
    let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().expect("24 bytes");
    let (body, tag) = sealed[1 + NONCE_LEN..].split_at(sealed.len() - 1 - NONCE_LEN - TAG_LEN);
    let mut body = body.to_vec();
    aead.decrypt_in_place_detached(
        XNonce::from_slice(&nonce),
        CHUNK_AAD_V1,
        &mut body,
        Tag::from_slice(tag),
    )
    .map_err(|_| "it fails authentication".to_string())?;
    let pt = match body[0] {
        0 => {
            if body.len() - 1 > max_len {
                return Err(format!(
                    "it holds {} bytes, more than the {max_len} expected",
                    body.len() - 1
                ));
            }
            body.remove(0);
            body
        }
        1 => zstd_decompress(&body[1..], max_len)
            .map_err(|e| format!("it does not decompress to at most {max_len} bytes: {e}"))?,
        other => return Err(format!("body flag {other} is unknown")),
    };
    let h = blake3::keyed_hash(nonce_key, &pt);
    if h.as_bytes()[..NONCE_LEN] != nonce {
        return Err("its nonce is not the one its content gives".into());
    }
    Ok(pt)
}
