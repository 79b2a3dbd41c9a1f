//! Sealed entries: an entry's metadata encrypted, and what the server sees bound to it.
//!
//! ```text
//! meta   = size u64 LE || mode u32 LE || mtime_ns i64 LE || target_len u32 LE || target
//! aad    = "lbsync entry v1" || path_len u32 LE || plaintext path || version u64 LE
//!          || kind u8 (file 0, dir 1, symlink 2) || deleted u8 || manifest id (32 zero bytes: none)
//! sealed = 0x01 || nonce(24, random) || XChaCha20-Poly1305(entry aead key, nonce, meta, aad)
//! ```
//!
//! The server form of an entry has the sealed path, `size`, `mode`, `mtime_ns` 0, no symlink
//! target, and `sealed` as above; kind, deleted, version, manifest id, device, seq and commit time
//! stay visible. Binding the plaintext path, version, kind, deletion and manifest into the aad
//! means the server can neither move an entry to another path, nor replay a version as another,
//! nor forge a deletion, nor swap manifests.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use lbsync_proto::path::MAX_PATH_BYTES;
use lbsync_proto::{Entry, EntryKind, SyncPath};

use crate::chunk::{NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result, tampered};

/// The format byte of an entry's sealed metadata.
pub const ENTRY_FORMAT: u8 = 1;
/// The start of an entry's associated data.
pub const ENTRY_AAD_TAG: &[u8] = b"lbsync entry v1";
/// The longest symlink target an encrypted folder takes, in bytes.
pub const MAX_TARGET_BYTES: usize = MAX_PATH_BYTES;

const META_FIXED: usize = 8 + 4 + 8 + 4;

fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
    }
}

fn aad(path: &SyncPath, e: &Entry, version: u64) -> Vec<u8> {
    let p = path.as_str().as_bytes();
    let mut a = Vec::with_capacity(ENTRY_AAD_TAG.len() + 4 + p.len() + 8 + 2 + 32);
    a.extend_from_slice(ENTRY_AAD_TAG);
    a.extend_from_slice(&(p.len() as u32).to_le_bytes());
    a.extend_from_slice(p);
    a.extend_from_slice(&version.to_le_bytes());
    a.push(kind_byte(e.kind));
    a.push(u8::from(e.deleted));
    a.extend_from_slice(e.manifest.as_ref().map_or(&[0; 32], |m| m.as_bytes()));
    a
}

pub(crate) fn seal(
    aead: &XChaCha20Poly1305,
    sealed_path: SyncPath,
    e: &Entry,
    version: u64,
) -> Result<Entry> {
    let target = e.symlink_target.as_deref().unwrap_or("");
    if target.len() > MAX_TARGET_BYTES {
        return Err(Error::BadInput(format!(
            "the symlink {} points to a target of {} bytes, the limit in an encrypted folder is \
             {MAX_TARGET_BYTES}: shorten it (it is not synced until then)",
            e.path,
            target.len()
        )));
    }
    let mut nonce = [0u8; NONCE_LEN];
    crate::random::fill(&mut nonce);
    let mut buf = Vec::with_capacity(1 + NONCE_LEN + META_FIXED + target.len() + TAG_LEN);
    buf.push(ENTRY_FORMAT);
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(&e.size.to_le_bytes());
    buf.extend_from_slice(&e.mode.to_le_bytes());
    buf.extend_from_slice(&e.mtime_ns.to_le_bytes());
    buf.extend_from_slice(&(target.len() as u32).to_le_bytes());
    buf.extend_from_slice(target.as_bytes());
    let tag = aead
        .encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            &aad(&e.path, e, version),
            &mut buf[1 + NONCE_LEN..],
        )
        .expect("XChaCha20-Poly1305 seals any metadata length");
    buf.extend_from_slice(&tag);
    Ok(Entry {
        path: sealed_path,
        kind: e.kind,
        size: 0,
        mode: 0,
        mtime_ns: 0,
        manifest: e.manifest,
        version,
        deleted: e.deleted,
        device: e.device.clone(),
        symlink_target: None,
        seq: e.seq,
        committed_ns: e.committed_ns,
        sealed: buf,
    })
}

pub(crate) fn open(aead: &XChaCha20Poly1305, plain_path: SyncPath, e: &Entry) -> Result<Entry> {
    let fail = |why: &str| {
        tampered(format!(
            "entry for {plain_path} at version {}: {why}",
            e.version
        ))
    };
    let s = &e.sealed;
    if s.is_empty() {
        return Err(fail("it carries no sealed metadata"));
    }
    if s.len() < 1 + NONCE_LEN + META_FIXED + TAG_LEN {
        return Err(fail(&format!(
            "its sealed metadata is {} bytes, too short",
            s.len()
        )));
    }
    if s[0] != ENTRY_FORMAT {
        return Err(fail(&format!("sealed metadata format {} is unknown", s[0])));
    }
    let nonce = XNonce::from_slice(&s[1..1 + NONCE_LEN]);
    let (meta, tag) = s[1 + NONCE_LEN..].split_at(s.len() - 1 - NONCE_LEN - TAG_LEN);
    let mut meta = meta.to_vec();
    aead.decrypt_in_place_detached(
        nonce,
        &aad(&plain_path, e, e.version),
        &mut meta,
        Tag::from_slice(tag),
    )
    .map_err(|_| {
        fail(
            "it fails authentication (its path, version, kind, deletion or manifest is not what \
             was sealed)",
        )
    })?;
    let u64_at = |i: usize| u64::from_le_bytes(meta[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(meta[i..i + 4].try_into().expect("4 bytes"));
    let size = u64_at(0);
    let mode = u32_at(8);
    let mtime_ns = u64_at(12) as i64;
    let target_len = u32_at(20) as usize;
    if meta.len() != META_FIXED + target_len || target_len > MAX_TARGET_BYTES {
        return Err(fail("its sealed metadata has the wrong length"));
    }
    let symlink_target = if target_len == 0 {
        None
    } else {
        Some(
            String::from_utf8(meta[META_FIXED..].to_vec())
                .map_err(|_| fail("its symlink target is not UTF-8"))?,
        )
    };
    Ok(Entry {
        path: plain_path,
        kind: e.kind,
        size,
        mode,
        mtime_ns,
        manifest: e.manifest,
        version: e.version,
        deleted: e.deleted,
        device: e.device.clone(),
        symlink_target,
        seq: e.seq,
        committed_ns: e.committed_ns,
        sealed: Vec::new(),
    })
}
