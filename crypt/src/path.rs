//! Sealed paths: each component encrypted deterministically with AES-256-SIV.
//!
//! ```text
//! padded    = name || 0x80 || 0x00 ...        (to a multiple of 32 bytes, at least 32)
//! sealed    = AES-256-SIV(path siv key, ad = [plaintext parent path, "" at the top], padded)
//!           = tag(16) || ciphertext(32 k)
//! component = base64url, unpadded, of sealed  ([A-Za-z0-9_-] only: never '.', '..', '.lbsync')
//! ```

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lbsync_proto::SyncPath;
use lbsync_proto::path::MAX_PATH_BYTES;

use crate::error::{Error, Result, tampered};

/// Names are padded to a multiple of this many bytes, so that the server learns a name's length
/// only to within a block.
pub const NAME_BLOCK: usize = 32;
/// The SIV tag in front of each sealed component.
pub const NAME_TAG: usize = 16;

fn siv(key: &[u8; 64]) -> Aes256Siv {
    Aes256Siv::new(key.into())
}

fn pad(name: &str) -> Vec<u8> {
    let n = name.len() + 1;
    let mut out = Vec::with_capacity(n.div_ceil(NAME_BLOCK) * NAME_BLOCK);
    out.extend_from_slice(name.as_bytes());
    out.push(0x80);
    out.resize(n.div_ceil(NAME_BLOCK) * NAME_BLOCK, 0);
    out
}

fn unpad(mut padded: Vec<u8>) -> Option<Vec<u8>> {
    while padded.last() == Some(&0) {
        padded.pop();
    }
    (padded.pop() == Some(0x80)).then_some(padded)
}

/// Whether one path component has the shape of a sealed name: unpadded base64url of a 16-byte
/// tag and `32 k` bytes (`k >= 1`).
pub fn sealed_component_shape_ok(component: &str) -> bool {
    // Decoding checks the alphabet, the length and that no bits trail.
    match URL_SAFE_NO_PAD.decode(component) {
        Ok(raw) => {
            raw.len() >= NAME_TAG + NAME_BLOCK && (raw.len() - NAME_TAG).is_multiple_of(NAME_BLOCK)
        }
        Err(_) => false,
    }
}

/// Whether every component of `path` has the shape of a sealed name (and the path is at most
/// 4096 bytes): the check the server applies to the paths committed to an encrypted folder, so
/// that a client that forgot to encrypt cannot leak names. Needs no key.
pub fn sealed_path_shape_ok(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && path.split('/').all(sealed_component_shape_ok)
}

pub(crate) fn seal(key: &[u8; 64], path: &SyncPath) -> Result<SyncPath> {
    let mut sealed = String::new();
    let mut parent = "";
    let plain = path.as_str();
    let mut start = 0;
    for name in plain.split('/') {
        let ct = siv(key)
            .encrypt([parent.as_bytes()], &pad(name))
            .map_err(|_| Error::BadInput(format!("path {plain:?} could not be sealed")))?;
        if !sealed.is_empty() {
            sealed.push('/');
        }
        URL_SAFE_NO_PAD.encode_string(&ct, &mut sealed);
        start += name.len();
        parent = &plain[..start];
        start += 1;
    }
    if sealed.len() > MAX_PATH_BYTES {
        return Err(Error::PathTooLong { len: sealed.len() });
    }
    SyncPath::new(sealed).map_err(|e| Error::BadInput(format!("sealed path is not valid: {e}")))
}

pub(crate) fn open(key: &[u8; 64], path: &SyncPath) -> Result<SyncPath> {
    let sealed = path.as_str();
    let mut plain = String::with_capacity(sealed.len() / 2);
    for (i, comp) in sealed.split('/').enumerate() {
        let fail =
            |why: &str| tampered(format!("path component {} of a sealed path: {why}", i + 1));
        let raw = URL_SAFE_NO_PAD
            .decode(comp)
            .map_err(|_| fail("it is not base64url"))?;
        if raw.len() < NAME_TAG + NAME_BLOCK || !(raw.len() - NAME_TAG).is_multiple_of(NAME_BLOCK) {
            return Err(fail(&format!(
                "{} bytes is not the shape of a sealed name",
                raw.len()
            )));
        }
        let padded = siv(key)
            .decrypt([plain.as_bytes()], &raw)
            .map_err(|_| fail("it fails authentication (or sits under another directory)"))?;
        let name = unpad(padded).ok_or_else(|| fail("its padding is wrong"))?;
        let name = String::from_utf8(name).map_err(|_| fail("it is not UTF-8"))?;
        if name.is_empty() || name.contains('/') {
            return Err(fail("it opens to an empty name or one with '/'"));
        }
        if i > 0 {
            plain.push('/');
        }
        plain.push_str(&name);
    }
    SyncPath::new(plain)
        .map_err(|e| tampered(format!("a sealed path opens to a path refused: {e}")))
}
