//! How a folder's chunks, manifests and entries look on the server: as they are (a plain
//! folder), or sealed with the folder key (an end-to-end encrypted folder, see
//! [`lbsync_crypt`]).
//!
//! Every point where the client computes a chunk id, sends or receives chunk bytes, builds or
//! decodes a manifest, or sends or receives an entry asks the folder's [`FolderCodec`]. With
//! [`FolderCodec::Plain`] each of them does what a plain folder always did, byte for byte.

use bytes::Bytes;
use lbsync_chunkstore::{ChunkId, ChunkRef, Manifest};
use lbsync_crypt::FolderCrypt;
use lbsync_proto::convert::max_sealed_chunk;
use lbsync_proto::{Entry, SyncPath, pb};

use crate::error::{Error, Result};

/// The folder's codec.
#[derive(Clone, Default)]
pub enum FolderCodec {
    /// Chunks, manifests and entries as they are.
    #[default]
    Plain,
    /// Sealed with the folder key: chunk ids are the BLAKE3 of the sealed bytes, manifest
    /// lengths are masked, paths and entry metadata are sealed.
    Sealed(FolderCrypt),
}

/// A chunk of a local file as this folder stores it: the id the server knows it by, the file's
/// bytes, and what is sent for it.
#[derive(Clone)]
pub struct Piece {
    id: ChunkId,
    plain: Bytes,
    /// In an encrypted folder, the sealed bytes (what is sent and stored).
    sealed: Option<Bytes>,
}

impl Piece {
    /// The id the server knows the chunk by.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// The file's bytes.
    pub fn plain(&self) -> &Bytes {
        &self.plain
    }

    /// The number of the file's bytes.
    pub fn len(&self) -> usize {
        self.plain.len()
    }

    /// Whether it holds no bytes (no chunker makes such a chunk).
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty()
    }

    /// The manifest's ref: the id the server knows and the file's length.
    pub fn chunk_ref(&self) -> ChunkRef {
        ChunkRef {
            id: self.id,
            len: self.plain.len() as u32,
        }
    }

    /// The bytes the server stores for it: the file's bytes, or the sealed bytes in an
    /// encrypted folder. What a delta is made of and against.
    pub fn stored(&self) -> &Bytes {
        self.sealed.as_ref().unwrap_or(&self.plain)
    }

    /// The chunk on the wire, compressed when `probe` says it is worth trying (sealed bytes
    /// do not compress: they go as they are).
    pub fn wire(&self, probe: &mut lbsync_chunkstore::CompressProbe) -> pb::ChunkData {
        match &self.sealed {
            None => lbsync_proto::wire::encode_chunk_probed(self.id, &self.plain, probe),
            Some(sealed) => raw_wire(self.id, sealed),
        }
    }

    /// The chunk on the wire, compressed if that helps (sealed bytes go as they are).
    pub fn wire_unprobed(&self) -> pb::ChunkData {
        match &self.sealed {
            None => lbsync_proto::wire::encode_chunk(self.id, &self.plain),
            Some(sealed) => raw_wire(self.id, sealed),
        }
    }
}

/// Sealed bytes on the wire: uncompressed, no delta.
fn raw_wire(id: ChunkId, sealed: &Bytes) -> pb::ChunkData {
    pb::ChunkData {
        id: Bytes::copy_from_slice(id.as_bytes()),
        compression: pb::Compression::None.into(),
        raw_len: sealed.len() as u32,
        data: sealed.clone(),
        base_ids: Bytes::new(),
    }
}

impl FolderCodec {
    /// The codec of a synced directory: sealed with the key in `.lbsync/folder.key` when its
    /// state says it is encrypted.
    pub fn of_folder(state: &crate::state::StateStore) -> Result<Self> {
        match &state.state.encrypted {
            None => Ok(Self::Plain),
            Some(fingerprint) => {
                let key = crate::keys::load_key(state.dir())?;
                let crypt = key.crypt();
                if crypt.fingerprint() != fingerprint {
                    return Err(Error::Key(format!(
                        "{} holds the key {}, but this folder was set up with {fingerprint}: \
                         put the right key file back, or join the folder again with its \
                         passphrase (`lbsync-client init`)",
                        state.dir().join(crate::keys::KEY_FILE).display(),
                        crypt.fingerprint()
                    )));
                }
                Ok(Self::Sealed(crypt))
            }
        }
    }

    /// True for an end-to-end encrypted folder.
    pub fn is_sealed(&self) -> bool {
        matches!(self, Self::Sealed(_))
    }

    /// A chunk of a local file, its bytes as cut, as this folder stores it: named by the BLAKE3
    /// of its bytes, or sealed and named by the sealed bytes in an encrypted folder.
    pub fn piece(&self, plain: Bytes) -> Piece {
        match self {
            Self::Plain => Piece {
                id: ChunkId::of(&plain),
                plain,
                sealed: None,
            },
            Self::Sealed(crypt) => {
                let s = crypt.seal_chunk(&plain);
                Piece {
                    id: s.id,
                    plain,
                    sealed: Some(s.bytes),
                }
            }
        }
    }

    /// [`Self::piece`] for each of `chunks` (bytes as cut, unhashed), in order. Sealing costs
    /// far more than hashing (about 400 MB/s a core against 2.5 GB/s), so an encrypted folder
    /// seals a batch on every core, and hashes nothing but the sealed bytes; a plain folder
    /// hashes its chunks here, on the caller's thread, while the cutter runs on another.
    pub fn pieces(&self, chunks: Vec<Bytes>) -> Vec<Piece> {
        match self {
            Self::Plain => chunks.into_iter().map(|c| self.piece(c)).collect(),
            Self::Sealed(_) => {
                use rayon::prelude::*;
                chunks.into_par_iter().map(|c| self.piece(c)).collect()
            }
        }
    }

    /// The manifest of a file's chunks (refs from [`Piece::chunk_ref`]).
    pub fn manifest(&self, refs: Vec<ChunkRef>) -> Manifest {
        match self {
            Self::Plain => Manifest::new(refs),
            Self::Sealed(crypt) => Manifest::new(refs).masked(crypt.length_mask()),
        }
    }

    /// A manifest's encoding, as the server or the local cache holds it.
    pub fn decode_manifest(&self, bytes: &[u8]) -> lbsync_chunkstore::Result<Manifest> {
        match self {
            Self::Plain => Manifest::decode(bytes),
            Self::Sealed(crypt) => Manifest::decode_masked(bytes, &crypt.length_mask()),
        }
    }

    /// Whether `plain`, bytes read from a local file or the cache, are the chunk `id` (in an
    /// encrypted folder: whether they seal to it).
    pub fn holds(&self, id: &ChunkId, plain: &[u8]) -> bool {
        match self {
            Self::Plain => ChunkId::of(plain) == *id,
            Self::Sealed(crypt) => crypt.seal_chunk(plain).id == *id,
        }
    }

    /// The largest chunk the server may send, for chunks of at most `max_len` bytes.
    pub fn wire_max_len(&self, max_len: u32) -> u32 {
        match self {
            Self::Plain => max_len,
            Self::Sealed(_) => max_sealed_chunk(max_len),
        }
    }

    /// A chunk that arrived (already checked against its id on the wire): the file's bytes,
    /// of at most `max_len`.
    pub fn open_chunk(&self, id: ChunkId, data: Bytes, max_len: u32) -> Result<Bytes> {
        match self {
            Self::Plain => Ok(data),
            Self::Sealed(crypt) => crypt
                .open_chunk(&id, &data, max_len as usize)
                .map(Bytes::from)
                .map_err(|e| {
                    Error::Tampered(format!(
                        "the server sent bytes that are not this folder's chunk {id}: {e}"
                    ))
                }),
        }
    }

    /// The bytes the server stores for a chunk whose plaintext is `plain` (sealed, in an
    /// encrypted folder): what a delta against that chunk is made against. Sealing is
    /// deterministic, so these are the very bytes the server holds.
    pub fn stored_form(&self, plain: &Bytes) -> Bytes {
        match self {
            Self::Plain => plain.clone(),
            Self::Sealed(crypt) => crypt.seal_chunk(plain).bytes,
        }
    }

    /// An entry as the server receives it, committed on `base_version`: in an encrypted folder
    /// its path and metadata sealed for version `base_version + 1`.
    pub fn seal_entry(&self, e: Entry, base_version: u64) -> Result<Entry> {
        match self {
            Self::Plain => Ok(e),
            Self::Sealed(crypt) => Ok(crypt.seal_entry(&e, base_version + 1)?),
        }
    }

    /// An entry from the server, in the clear (its `path` the plaintext path). In an encrypted
    /// folder one the folder's key did not seal is [`Error::Tampered`], naming the plaintext
    /// path when at least that opens.
    pub fn open_entry(&self, e: Entry) -> Result<Entry> {
        match self {
            Self::Plain => Ok(e),
            Self::Sealed(crypt) => crypt.open_entry(&e).map_err(|err| {
                let what = match crypt.open_path(&e.path) {
                    Ok(p) => format!("an entry for {p} (v{})", e.version),
                    Err(_) => format!("an entry (v{}) whose path it cannot open", e.version),
                };
                Error::Tampered(format!(
                    "the server sent {what} that this folder's key did not seal: not applied \
                     ({err})"
                ))
            }),
        }
    }

    /// A path as the server knows it.
    pub fn seal_path(&self, p: &SyncPath) -> Result<SyncPath> {
        match self {
            Self::Plain => Ok(p.clone()),
            Self::Sealed(crypt) => Ok(crypt.seal_path(p)?),
        }
    }

    /// The folder key's fingerprint, in an encrypted folder.
    pub fn fingerprint(&self) -> Option<&str> {
        match self {
            Self::Plain => None,
            Self::Sealed(crypt) => Some(crypt.fingerprint()),
        }
    }
}

/// Whether the server's word on encryption (the handshake's `encrypted`) agrees with how the
/// folder was set up here; a folder set up encrypted never syncs in the clear.
pub fn check_handshake(
    root: &std::path::Path,
    folder: &str,
    codec: &FolderCodec,
    server_encrypted: bool,
) -> Result<()> {
    match (codec.is_sealed(), server_encrypted) {
        (true, false) => Err(Error::Key(format!(
            "the server says folder {folder} is not encrypted, but this folder was set up \
             encrypted: refusing to sync (check that --server names the right server)"
        ))),
        (false, true) => Err(Error::Key(format!(
            "folder {folder} is end-to-end encrypted: run `lbsync-client init {} --folder \
             {folder}` with its passphrase",
            root.display()
        ))),
        _ => Ok(()),
    }
}
