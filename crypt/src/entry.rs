//! Sealed entries: an entry's metadata encrypted, and what the server sees bound to it.
//!
//! ```text
//! meta   = uleb128 size || uleb128 mode || uleb128 zigzag(mtime_ns) || uleb128 target_len || target
//! aad    = "lbsync entry v2" || path_len u32 LE || plaintext path || version u64 LE
//!          || kind u8 (file 0, dir 1, symlink 2) || deleted u8 || manifest id (32 zero bytes: none)
//! sealed = 0x02 || tag(16) || AES-256-GCM-SIV(entry siv key, nonce = 0^12, meta, aad)
//! ```
//!
//! The server form of an entry has the sealed path, `size`, `mode` and `mtime_ns` 0, no symlink
//! target, and `sealed` as above; kind, deleted, version, manifest id, device, seq and commit time
//! stay visible. Binding the plaintext path, version, kind, deletion and manifest into the aad
//! means the server can neither move an entry to another path, nor replay a version as another,
//! nor forge a deletion, nor swap manifests.
//!
//! The nonce is fixed: AES-GCM-SIV is misuse-resistant, and the aad names the path and version,
//! which one commit has, so equal ciphertexts only ever say that the same metadata was sealed for
//! the same version of the same path (two devices racing on one version; one of them wins). It
//! makes sealed metadata 33 bytes for a file instead of format 1's 65, on every entry that
//! travels (a commit, its answer, a change).
//!
//! Format 1 (by lbsync before 2026-12-03), still opened:
//!
//! ```text
//! meta   = size u64 LE || mode u32 LE || mtime_ns i64 LE || target_len u32 LE || target
//! aad    = "lbsync entry v1" || (as above)
//! sealed = 0x01 || nonce(24, random) || XChaCha20-Poly1305(entry aead key, nonce, meta, aad)
//! ```

use aes_gcm_siv::Aes256GcmSiv;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use lbsync_proto::path::MAX_PATH_BYTES;
use lbsync_proto::{Entry, EntryKind, SyncPath};

use crate::chunk::{NONCE_LEN, TAG_LEN, push_uleb128, read_uleb128};
use crate::error::{Error, Result, tampered};

/// The format byte of an entry's sealed metadata, as sealed now.
pub const ENTRY_FORMAT: u8 = 2;
/// The format byte of metadata sealed by lbsync before format 2: still opened.
pub const ENTRY_FORMAT_V1: u8 = 1;
/// The start of an entry's associated data.
pub const ENTRY_AAD_TAG: &[u8] = b"lbsync entry v2";
/// The start of a format-1 entry's associated data.
pub const ENTRY_AAD_TAG_V1: &[u8] = b"lbsync entry v1";
/// The longest symlink target an encrypted folder takes, in bytes.
pub const MAX_TARGET_BYTES: usize = MAX_PATH_BYTES;

/// Format 1's metadata before the target: size, mode, mtime, target length.
const META_FIXED: usize = 8 + 4 + 8 + 4;
/// Format 2's fixed nonce (see the module's doc).
const SIV_NONCE: [u8; 12] = [0; 12];

fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
    }
}

fn aad(tag: &[u8], path: &SyncPath, e: &Entry, version: u64) -> Vec<u8> {
    let p = path.as_str().as_bytes();
    let mut a = Vec::with_capacity(tag.len() + 4 + p.len() + 8 + 2 + 32);
    a.extend_from_slice(tag);
    a.extend_from_slice(&(p.len() as u32).to_le_bytes());
    a.extend_from_slice(p);
    a.extend_from_slice(&version.to_le_bytes());
    a.push(kind_byte(e.kind));
    a.push(u8::from(e.deleted));
    a.extend_from_slice(e.manifest.as_ref().map_or(&[0; 32], |m| m.as_bytes()));
    a
}

/// The ciphers entries are sealed and opened with.
pub(crate) struct EntryCiphers {
    /// Format 2.
    pub siv: Aes256GcmSiv,
    /// Format 1, opened only (and sealed by tests, to check that it still opens).
    pub v1: XChaCha20Poly1305,
}

/// A ULEB128 at the start of `b`: the value and the rest of `b`.
fn take_uleb128(b: &[u8]) -> Option<(u64, &[u8])> {
    read_uleb128(b, 10).map(|(v, n)| (v, &b[n..]))
}

fn target_of(e: &Entry) -> Result<&str> {
    let target = e.symlink_target.as_deref().unwrap_or("");
    if target.len() > MAX_TARGET_BYTES {
        return Err(Error::BadInput(format!(
            "the symlink {} points to a target of {} bytes, the limit in an encrypted folder is \
             {MAX_TARGET_BYTES}: shorten it (it is not synced until then)",
            e.path,
            target.len()
        )));
    }
    Ok(target)
}

/// The server form of `e` at `version`, with `sealed` as its sealed metadata.
fn server_form(sealed_path: SyncPath, e: &Entry, version: u64, sealed: Vec<u8>) -> Entry {
    Entry {
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
        sealed,
    }
}

pub(crate) fn seal(
    c: &EntryCiphers,
    sealed_path: SyncPath,
    e: &Entry,
    version: u64,
) -> Result<Entry> {
    use aes_gcm_siv::aead::AeadInPlace as _;
    let target = target_of(e)?;
    let mut buf = Vec::with_capacity(1 + TAG_LEN + 4 * 10 + target.len());
    buf.push(ENTRY_FORMAT);
    buf.extend_from_slice(&[0; TAG_LEN]);
    push_uleb128(&mut buf, e.size);
    push_uleb128(&mut buf, u64::from(e.mode));
    push_uleb128(&mut buf, ((e.mtime_ns << 1) ^ (e.mtime_ns >> 63)) as u64);
    push_uleb128(&mut buf, target.len() as u64);
    buf.extend_from_slice(target.as_bytes());
    let tag = c
        .siv
        .encrypt_in_place_detached(
            (&SIV_NONCE).into(),
            &aad(ENTRY_AAD_TAG, &e.path, e, version),
            &mut buf[1 + TAG_LEN..],
        )
        .expect("AES-GCM-SIV seals any metadata length");
    buf[1..1 + TAG_LEN].copy_from_slice(&tag);
    Ok(server_form(sealed_path, e, version, buf))
}

/// Seals `e` in format 1, as lbsync did before format 2.
#[cfg(test)]
pub(crate) fn seal_v1(
    c: &EntryCiphers,
    sealed_path: SyncPath,
    e: &Entry,
    version: u64,
) -> Result<Entry> {
    let target = target_of(e)?;
    let mut nonce = [0u8; NONCE_LEN];
    crate::random::fill(&mut nonce);
    let mut buf = Vec::with_capacity(1 + NONCE_LEN + META_FIXED + target.len() + TAG_LEN);
    buf.push(ENTRY_FORMAT_V1);
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(&e.size.to_le_bytes());
    buf.extend_from_slice(&e.mode.to_le_bytes());
    buf.extend_from_slice(&e.mtime_ns.to_le_bytes());
    buf.extend_from_slice(&(target.len() as u32).to_le_bytes());
    buf.extend_from_slice(target.as_bytes());
    let tag =
        c.v1.encrypt_in_place_detached(
            XNonce::from_slice(&nonce),
            &aad(ENTRY_AAD_TAG_V1, &e.path, e, version),
            &mut buf[1 + NONCE_LEN..],
        )
        .expect("XChaCha20-Poly1305 seals any metadata length");
    buf.extend_from_slice(&tag);
    Ok(server_form(sealed_path, e, version, buf))
}

/// The metadata an entry's sealed bytes hold, once opened.
struct Meta {
    size: u64,
    mode: u32,
    mtime_ns: i64,
    symlink_target: Option<String>,
}

const AUTH_FAILED: &str = "it fails authentication (its path, version, kind, deletion or \
                           manifest is not what was sealed)";

pub(crate) fn open(c: &EntryCiphers, plain_path: SyncPath, e: &Entry) -> Result<Entry> {
    let fail = |why: &str| {
        tampered(format!(
            "entry for {plain_path} at version {}: {why}",
            e.version
        ))
    };
    let meta = match e.sealed.first() {
        None => return Err(fail("it carries no sealed metadata")),
        Some(&ENTRY_FORMAT) => open_v2(c, &plain_path, e),
        Some(&ENTRY_FORMAT_V1) => open_v1(c, &plain_path, e),
        Some(other) => Err(format!("sealed metadata format {other} is unknown")),
    }
    .map_err(|why| fail(&why))?;
    Ok(Entry {
        path: plain_path,
        kind: e.kind,
        size: meta.size,
        mode: meta.mode,
        mtime_ns: meta.mtime_ns,
        manifest: e.manifest,
        version: e.version,
        deleted: e.deleted,
        device: e.device.clone(),
        symlink_target: meta.symlink_target,
        seq: e.seq,
        committed_ns: e.committed_ns,
        sealed: Vec::new(),
    })
}

fn target_from(bytes: &[u8]) -> std::result::Result<Option<String>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| "its symlink target is not UTF-8".into())
}

fn open_v2(
    c: &EntryCiphers,
    plain_path: &SyncPath,
    e: &Entry,
) -> std::result::Result<Meta, String> {
    use aes_gcm_siv::aead::AeadInPlace as _;
    let s = &e.sealed;
    if s.len() < 1 + TAG_LEN + 4 {
        return Err(format!(
            "its sealed metadata is {} bytes, too short",
            s.len()
        ));
    }
    let (tag, ct) = s[1..].split_at(TAG_LEN);
    let mut meta = ct.to_vec();
    c.siv
        .decrypt_in_place_detached(
            (&SIV_NONCE).into(),
            &aad(ENTRY_AAD_TAG, plain_path, e, e.version),
            &mut meta,
            tag.into(),
        )
        .map_err(|_| AUTH_FAILED.to_owned())?;
    let bad = || "its sealed metadata is malformed".to_owned();
    let (size, rest) = take_uleb128(&meta).ok_or_else(bad)?;
    let (mode, rest) = take_uleb128(rest).ok_or_else(bad)?;
    let (mtime, rest) = take_uleb128(rest).ok_or_else(bad)?;
    let (target_len, rest) = take_uleb128(rest).ok_or_else(bad)?;
    if rest.len() as u64 != target_len || rest.len() > MAX_TARGET_BYTES {
        return Err("its sealed metadata has the wrong length".into());
    }
    Ok(Meta {
        size,
        mode: u32::try_from(mode).map_err(|_| bad())?,
        mtime_ns: ((mtime >> 1) as i64) ^ -((mtime & 1) as i64),
        symlink_target: target_from(rest)?,
    })
}

fn open_v1(
    c: &EntryCiphers,
    plain_path: &SyncPath,
    e: &Entry,
) -> std::result::Result<Meta, String> {
    let s = &e.sealed;
    if s.len() < 1 + NONCE_LEN + META_FIXED + TAG_LEN {
        return Err(format!(
            "its sealed metadata is {} bytes, too short",
            s.len()
        ));
    }
    let nonce = XNonce::from_slice(&s[1..1 + NONCE_LEN]);
    let (meta, tag) = s[1 + NONCE_LEN..].split_at(s.len() - 1 - NONCE_LEN - TAG_LEN);
    let mut meta = meta.to_vec();
    c.v1.decrypt_in_place_detached(
        nonce,
        &aad(ENTRY_AAD_TAG_V1, plain_path, e, e.version),
        &mut meta,
        Tag::from_slice(tag),
    )
    .map_err(|_| AUTH_FAILED.to_owned())?;
    let u64_at = |i: usize| u64::from_le_bytes(meta[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(meta[i..i + 4].try_into().expect("4 bytes"));
    let target_len = u32_at(20) as usize;
    if meta.len() != META_FIXED + target_len || target_len > MAX_TARGET_BYTES {
        return Err("its sealed metadata has the wrong length".into());
    }
    Ok(Meta {
        size: u64_at(0),
        mode: u32_at(8),
        mtime_ns: u64_at(12) as i64,
        symlink_target: target_from(&meta[META_FIXED..])?,
    })
}
