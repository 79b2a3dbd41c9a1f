//! Sealed chunks: deterministic authenticated encryption of a chunk's bytes.
//!
//! ```text
//! nonce  = keyed_hash(chunk nonce key, pt)[..24]
//! body   = 0x00 || pt              (raw)
//!        | 0x01 || zstd(pt)        (when that saves >= 1/32; decided from pt alone)
//! sealed = 0x01 || nonce || XChaCha20-Poly1305(chunk aead key, nonce, body, aad = "lbsync chunk v1")
//! id     = blake3(sealed)
//! ```

use std::cell::RefCell;

use bytes::Bytes;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use lbsync_chunkstore::ChunkId;

use crate::error::{Result, tampered};

/// The format byte of a sealed chunk.
pub const CHUNK_FORMAT: u8 = 1;
/// The AEAD's associated data for chunks.
pub const CHUNK_AAD: &[u8] = b"lbsync chunk v1";
/// Nonce length (XChaCha20-Poly1305).
pub(crate) const NONCE_LEN: usize = 24;
/// Tag length (Poly1305).
pub(crate) const TAG_LEN: usize = 16;
/// How many bytes a sealed chunk has beyond its (possibly compressed) payload: format byte,
/// nonce, body flag and tag. Within `lbsync_proto::convert::SEALED_CHUNK_OVERHEAD`.
pub const CHUNK_OVERHEAD: usize = 1 + NONCE_LEN + 1 + TAG_LEN;

const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

/// zstd level for chunk bodies. Part of the format in practice: another level gives other sealed
/// bytes for the same plaintext (still correct, but no dedup against chunks sealed before).
const ZSTD_LEVEL: i32 = 1;
/// Chunks longer than `2 * SAMPLE` are first probed by compressing their first `SAMPLE` bytes.
const SAMPLE: usize = 1024;

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

/// The compressed body of `pt`, when compressing pays. A function of `pt` alone (no state
/// carried from chunk to chunk), so that equal chunks always seal to equal bytes.
pub(crate) fn compressed(pt: &[u8]) -> Option<Vec<u8>> {
    if pt.len() > 2 * SAMPLE {
        let sample = &pt[..SAMPLE];
        if !pays(zstd_compress(sample)?.len(), sample.len()) {
            return None;
        }
    }
    zstd_compress(pt).filter(|z| pays(z.len(), pt.len()))
}

/// A sealed chunk: the bytes the server stores, and their id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedChunk {
    /// `blake3(bytes)`: the id the server stores it under and manifests name.
    pub id: ChunkId,
    /// The sealed bytes.
    pub bytes: Bytes,
}

pub(crate) fn nonce_of(nonce_key: &[u8; 32], pt: &[u8]) -> [u8; NONCE_LEN] {
    let h = blake3::keyed_hash(nonce_key, pt);
    h.as_bytes()[..NONCE_LEN]
        .try_into()
        .expect("24 of 32 bytes")
}

pub(crate) fn seal(aead: &XChaCha20Poly1305, nonce_key: &[u8; 32], pt: &[u8]) -> SealedChunk {
    let nonce = nonce_of(nonce_key, pt);
    let z = compressed(pt);
    let payload = z.as_deref().unwrap_or(pt);
    let mut buf = Vec::with_capacity(CHUNK_OVERHEAD + payload.len());
    buf.push(CHUNK_FORMAT);
    buf.extend_from_slice(&nonce);
    buf.push(if z.is_some() { FLAG_ZSTD } else { FLAG_RAW });
    buf.extend_from_slice(payload);
    let tag = aead
        .encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            CHUNK_AAD,
            &mut buf[1 + NONCE_LEN..],
        )
        .expect("XChaCha20-Poly1305 seals any chunk length lbsync uses");
    buf.extend_from_slice(&tag);
    SealedChunk {
        id: ChunkId::of(&buf),
        bytes: Bytes::from(buf),
    }
}

pub(crate) fn open(
    aead: &XChaCha20Poly1305,
    nonce_key: &[u8; 32],
    id: &ChunkId,
    sealed: &[u8],
    max_len: usize,
) -> Result<Vec<u8>> {
    let fail = |why: &str| tampered(format!("chunk {id}: {why}"));
    if ChunkId::of(sealed) != *id {
        return Err(fail("its bytes do not hash to its id"));
    }
    if sealed.len() < CHUNK_OVERHEAD {
        return Err(fail(&format!(
            "{} bytes is shorter than any sealed chunk ({CHUNK_OVERHEAD})",
            sealed.len()
        )));
    }
    if sealed[0] != CHUNK_FORMAT {
        return Err(fail(&format!(
            "format {} is unknown (a newer lbsync would say so in the folder; upgrade if one wrote it)",
            sealed[0]
        )));
    }
    let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().expect("24 bytes");
    let (body, tag) = sealed[1 + NONCE_LEN..].split_at(sealed.len() - 1 - NONCE_LEN - TAG_LEN);
    let mut body = body.to_vec();
    aead.decrypt_in_place_detached(
        XNonce::from_slice(&nonce),
        CHUNK_AAD,
        &mut body,
        Tag::from_slice(tag),
    )
    .map_err(|_| fail("it fails authentication"))?;
    let pt = match body[0] {
        FLAG_RAW => {
            if body.len() - 1 > max_len {
                return Err(fail(&format!(
                    "it holds {} bytes, more than the {max_len} expected",
                    body.len() - 1
                )));
            }
            body.remove(0);
            body
        }
        FLAG_ZSTD => zstd_decompress(&body[1..], max_len).map_err(|e| {
            fail(&format!(
                "it does not decompress to at most {max_len} bytes: {e}"
            ))
        })?,
        other => return Err(fail(&format!("body flag {other} is unknown"))),
    };
    if nonce_of(nonce_key, &pt) != nonce {
        return Err(fail("its nonce is not the one its content gives"));
    }
    Ok(pt)
}
