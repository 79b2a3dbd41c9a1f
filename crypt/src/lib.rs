//! The cryptographic core of lbsync's end-to-end encrypted folders: the server stores and syncs
//! what it cannot read.
//!
//! A folder has one random 32-byte [`FolderKey`]. The server keeps it only wrapped
//! ([`wrap_with_passphrase`], [`wrap_to_recipient`], in the age format); each device keeps it in
//! `.lbsync/folder.key` ([`FolderKey::to_file_text`]). [`FolderKey::crypt`] gives the
//! [`FolderCrypt`] that seals what goes to the server and opens what comes back: chunks, paths,
//! entries, and the [`LengthMask`] of manifests. Everything it opens is authenticated: a server
//! that substitutes, swaps or replays anything gets [`Error::Tampered`].
//!
//! # Formats (all integers little-endian)
//!
//! **Subkeys**: `blake3::derive_key(context, folder key)` with the contexts
//! `"lbsync 2026-12-02 chunk nonce"`, `"... chunk aead"`, `"... length mask"`,
//! `"... path siv 1"` and `"... path siv 2"` (the two halves, in that order, of the 64-byte
//! AES-256-SIV key: MAC key, then CTR key), `"... entry aead"`, `"... fingerprint"`,
//! `"... chunk block"`, and `"lbsync 2026-12-03 entry siv"`.
//!
//! **Fingerprint**: the first 10 bytes of the fingerprint subkey, hex, in groups of 4
//! (`ab12-cd34-ef56-7890-abcd`).
//!
//! **Key file** (`.lbsync/folder.key`, mode 0600): `lbsync-folder-key-v1 <64 hex>\n`.
//!
//! **Wrapped key**: an age file whose plaintext is `b"lbsync-folder-key-v1\n"` and the 32 key
//! bytes; kind [`KIND_PASSPHRASE`] (age scrypt recipient, age's default work factor, at most
//! [`MAX_SCRYPT_LOG_N`] accepted on unwrap) or [`KIND_X25519`] (age x25519 recipient, the label
//! being the `age1...` recipient). For tests only, [`SCRYPT_LOG_N_ENV`]
//! (`LBSYNC_SCRYPT_LOG_N`, honoured in `10..=22`) sets the work factor of new passphrase wraps,
//! so that tests do not spend a second per wrap.
//!
//! **Chunk** (deterministic: equal plaintexts give equal bytes and ids inside one folder, so
//! dedup works; another folder's key gives other ids, so the server cannot test for a known file):
//! format 2 ([`CHUNK_FORMAT`]) seals the chunk block by block, content-defined blocks of
//! [`BLOCK_MIN`]..[`BLOCK_MAX`] bytes each under deterministic AES-256-GCM-SIV, so an edited chunk
//! shares all its sealed blocks but the edited ones with the chunk it replaced and travels as a
//! delta; the chunk module's documentation gives the layout. A chunk of `n` plaintext bytes
//! seals to at most [`max_sealed_len`]`(n)` bytes. Format-1 chunks ([`CHUNK_FORMAT_V1`], one
//! XChaCha20-Poly1305 over the whole chunk) still open. Sealing is one BLAKE3 pass (the id) and
//! one AES-GCM-SIV pass a chunk, so callers seal on more than one thread ([`FolderCrypt`] is
//! `Send + Sync`).
//!
//! **Manifest lengths**: `masked = ((len - 1) ^ (m & 0x7fff_ffff)) + 1`, with
//! `m = u32 of keyed_hash(length mask key, sealed chunk id)[..4]` (see
//! [`lbsync_chunkstore::LengthMask`]).
//!
//! **Path**: each component sealed with AES-256-SIV, the plaintext parent path (`""` at the top)
//! as the one associated data item, the name padded with `0x80` and `0x00`s to a multiple of 32
//! bytes (at least 32); on the wire, unpadded base64url of `tag(16) || ciphertext`. So each
//! component decodes to `16 + 32 k` bytes ([`sealed_path_shape_ok`]), and never starts with `.`.
//! A sealed path over 4096 bytes is [`Error::PathTooLong`].
//!
//! **Entry** (the server form): path sealed; size, mode, mtime 0 and no symlink target;
//!
//! ```text
//! meta   = uleb128 size || uleb128 mode || uleb128 zigzag(mtime_ns) || uleb128 target_len || target
//! aad    = "lbsync entry v2" || path_len u32 || plaintext path || version u64 || kind u8
//!          (file 0, dir 1, symlink 2) || deleted u8 || manifest id (32 zero bytes when none)
//! sealed = 0x02 || tag(16) || AES-256-GCM-SIV(entry siv key, nonce = 0^12, meta, aad)
//! ```
//!
//! Entries sealed in format 1 (`0x01 || random nonce(24) || XChaCha20-Poly1305`, fixed-width
//! metadata, aad tag `"lbsync entry v1"`) still open.
//!
//! # Example
//!
//! ```
//! use lbsync_crypt::FolderKey;
//! use lbsync_proto::SyncPath;
//!
//! let crypt = FolderKey::generate().crypt();
//! let sealed = crypt.seal_chunk(b"hello");
//! assert_eq!(crypt.open_chunk(&sealed.id, &sealed.bytes, 1 << 20)?, b"hello");
//! let path = SyncPath::new("notes/today.txt")?;
//! let on_server = crypt.seal_path(&path)?;
//! assert!(lbsync_crypt::sealed_path_shape_ok(on_server.as_str()));
//! assert_eq!(crypt.open_path(&on_server)?, path);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod chunk;
mod entry;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod key;
mod path;
mod random;
mod siv;
mod wrap;

use std::fmt;
use std::sync::Arc;

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use lbsync_chunkstore::{ChunkId, LengthMask};
use lbsync_proto::{Entry, SyncPath};
use zeroize::Zeroize;

pub use chunk::{
    BLOCK_AVG, BLOCK_MAX, BLOCK_MIN, BLOCK_OVERHEAD, CHUNK_AAD, CHUNK_AAD_V1, CHUNK_FORMAT,
    CHUNK_FORMAT_V1, SealedChunk, max_sealed_len,
};
pub use entry::{ENTRY_AAD_TAG, ENTRY_AAD_TAG_V1, ENTRY_FORMAT, ENTRY_FORMAT_V1, MAX_TARGET_BYTES};
pub use error::{Error, Result};
pub use key::{FolderKey, KEY_FILE_TAG};
pub use path::{NAME_BLOCK, NAME_TAG, sealed_component_shape_ok, sealed_path_shape_ok};
pub use wrap::{
    Identity, KIND_PASSPHRASE, KIND_X25519, MAX_SCRYPT_LOG_N, SCRYPT_LOG_N_ENV,
    unwrap_with_identity, unwrap_with_passphrase, wrap_to_recipient, wrap_with_passphrase,
};

// What the server accepts as an encrypted folder's chunk holds every chunk this crate seals.
const _: () = assert!(
    max_sealed_len(1 << 20) <= lbsync_proto::convert::max_sealed_chunk(1 << 20) as usize
        && max_sealed_len(64 << 10) <= lbsync_proto::convert::max_sealed_chunk(64 << 10) as usize
        && max_sealed_len(1) <= lbsync_proto::convert::max_sealed_chunk(1) as usize
);

/// The ciphers of one encrypted folder (from [`FolderKey::crypt`]): seals what goes to the server
/// and opens what comes back. Cheap to clone, and shared across threads.
#[derive(Clone)]
pub struct FolderCrypt(Arc<Inner>);

struct Inner {
    fingerprint: String,
    /// Opens format-2 blocks.
    chunk_block: aes_gcm_siv::Aes256GcmSiv,
    /// Seals format-2 blocks: the same cipher and key, its fixed-nonce keys derived once.
    chunk_sealer: siv::FixedNonce,
    /// Format-1 chunks (sealed whole, before blocks): still opened.
    chunk_nonce: [u8; 32],
    chunk_aead: XChaCha20Poly1305,
    mask: LengthMask,
    path_siv: [u8; 64],
    entry: entry::EntryCiphers,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.chunk_nonce.zeroize();
        self.path_siv.zeroize();
    }
}

impl FolderCrypt {
    fn new(key: &FolderKey) -> Self {
        let mut aead_key = key.subkey(key::CTX_CHUNK_AEAD);
        let chunk_aead = XChaCha20Poly1305::new((&aead_key).into());
        aead_key.zeroize();
        let mut entry_key = key.subkey(key::CTX_ENTRY_AEAD);
        let entry_v1 = XChaCha20Poly1305::new((&entry_key).into());
        entry_key = key.subkey(key::CTX_ENTRY_SIV);
        let entry_siv =
            <aes_gcm_siv::Aes256GcmSiv as aes_gcm_siv::KeyInit>::new((&entry_key).into());
        entry_key.zeroize();
        let mut block_key = key.subkey(key::CTX_CHUNK_BLOCK);
        let chunk_block =
            <aes_gcm_siv::Aes256GcmSiv as aes_gcm_siv::KeyInit>::new((&block_key).into());
        let chunk_sealer = siv::FixedNonce::new(&block_key);
        block_key.zeroize();
        let mut path_siv = [0u8; 64];
        path_siv[..32].copy_from_slice(&key.subkey(key::CTX_PATH_SIV_1));
        path_siv[32..].copy_from_slice(&key.subkey(key::CTX_PATH_SIV_2));
        Self(Arc::new(Inner {
            fingerprint: key.fingerprint(),
            chunk_block,
            chunk_sealer,
            chunk_nonce: key.subkey(key::CTX_CHUNK_NONCE),
            chunk_aead,
            mask: LengthMask::new(key.subkey(key::CTX_LENGTH_MASK)),
            path_siv,
            entry: entry::EntryCiphers {
                siv: entry_siv,
                v1: entry_v1,
            },
        }))
    }

    /// The folder key's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.0.fingerprint
    }

    /// Seals a chunk's plaintext: the bytes to store and their id. Deterministic.
    pub fn seal_chunk(&self, pt: &[u8]) -> SealedChunk {
        chunk::seal(&self.0.chunk_sealer, pt)
    }

    /// Opens the sealed chunk `id` received as `sealed` (either format), whose plaintext is at
    /// most `max_len` bytes (the largest chunk). Checks the id, the format and every block's
    /// tag; any failure is [`Error::Tampered`].
    pub fn open_chunk(&self, id: &ChunkId, sealed: &[u8], max_len: usize) -> Result<Vec<u8>> {
        chunk::open(
            &self.0.chunk_block,
            (&self.0.chunk_aead, &self.0.chunk_nonce),
            id,
            sealed,
            max_len,
        )
    }

    /// The mask of this folder's manifest lengths (attach it with
    /// [`lbsync_chunkstore::Manifest::masked`], decode with
    /// [`lbsync_chunkstore::Manifest::decode_masked`]).
    pub fn length_mask(&self) -> LengthMask {
        self.0.mask.clone()
    }

    /// The path's server form: each component sealed. [`Error::PathTooLong`] when it is over
    /// 4096 bytes sealed.
    pub fn seal_path(&self, path: &SyncPath) -> Result<SyncPath> {
        path::seal(&self.0.path_siv, path)
    }

    /// The plaintext path of a server form made by [`FolderCrypt::seal_path`]; the result is a
    /// checked [`SyncPath`]. Any failure is [`Error::Tampered`].
    pub fn open_path(&self, sealed: &SyncPath) -> Result<SyncPath> {
        path::open(&self.0.path_siv, sealed)
    }

    /// Whether `path` has the shape of a sealed path (see [`sealed_path_shape_ok`]).
    pub fn is_sealed_path(&self, path: &SyncPath) -> bool {
        sealed_path_shape_ok(path.as_str())
    }

    /// The server form of the plaintext entry `e`, sealed for `version` (the version it will
    /// have once committed: the base version + 1). Every entry, tombstones included, gets one.
    pub fn seal_entry(&self, e: &Entry, version: u64) -> Result<Entry> {
        let path = self.seal_path(&e.path)?;
        entry::seal(&self.0.entry, path, e, version)
    }

    /// The plaintext entry of a server form, checked against the version, kind, deletion and
    /// manifest the server shows. Any failure is [`Error::Tampered`].
    pub fn open_entry(&self, e: &Entry) -> Result<Entry> {
        let path = self.open_path(&e.path)?;
        entry::open(&self.0.entry, path, e)
    }
}

impl fmt::Debug for FolderCrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FolderCrypt({})", self.0.fingerprint)
    }
}

#[cfg(test)]
mod tests;
