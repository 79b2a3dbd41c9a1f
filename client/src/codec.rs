//! How a folder's chunks, manifests and entries look on the server: as they are (a plain
//! folder), or sealed with the folder key (an end-to-end encrypted folder, see
//! [`lbsync_crypt`]).
//!
//! Every point where the client computes a chunk id, sends or receives chunk bytes, builds or
//! decodes a manifest, or sends or receives an entry asks the folder's [`FolderCodec`]. With
//! [`FolderCodec::Plain`] each of them does what a plain folder always did, byte for byte.

use bytes::Bytes;
use lbsync_chunkstore::{Chunk, ChunkId, ChunkRef, Manifest};
use lbsync_proto::pb;

use crate::error::{Error, Result};

/// The folder's codec.
#[derive(Clone, Default)]
pub enum FolderCodec {
    /// Chunks, manifests and entries as they are.
    #[default]
    Plain,
}

/// A chunk of a local file as this folder stores it: the id the server knows it by, the file's
/// bytes, and what is sent for it.
#[derive(Clone)]
pub struct Piece {
    id: ChunkId,
    plain: Bytes,
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

    /// The chunk on the wire, compressed when `probe` says it is worth trying.
    pub fn wire(&self, probe: &mut lbsync_chunkstore::CompressProbe) -> pb::ChunkData {
        lbsync_proto::wire::encode_chunk_probed(self.id, &self.plain, probe)
    }

    /// The chunk on the wire, compressed if that helps.
    pub fn wire_unprobed(&self) -> pb::ChunkData {
        lbsync_proto::wire::encode_chunk(self.id, &self.plain)
    }
}

impl FolderCodec {
    /// The codec of a synced directory: sealed with the key in `.lbsync/folder.key` when its
    /// state says it is encrypted.
    pub fn of_folder(state: &crate::state::StateStore) -> Result<Self> {
        match &state.state.encrypted {
            None => Ok(Self::Plain),
            Some(_) => Err(Error::Key("encrypted folders need the crypt crate".into())),
        }
    }

    /// True for an end-to-end encrypted folder.
    pub fn is_sealed(&self) -> bool {
        false
    }

    /// A chunk of a local file as this folder stores it.
    pub fn piece(&self, c: Chunk) -> Result<Piece> {
        Ok(Piece {
            id: c.id(),
            plain: c.into_data(),
        })
    }

    /// The manifest of a file's chunks (refs from [`Piece::chunk_ref`]).
    pub fn manifest(&self, refs: Vec<ChunkRef>) -> Manifest {
        Manifest::new(refs)
    }

    /// A manifest's encoding, as the server or the local cache holds it.
    pub fn decode_manifest(&self, bytes: &[u8]) -> lbsync_chunkstore::Result<Manifest> {
        Manifest::decode(bytes)
    }

    /// Whether `plain`, bytes read from a local file or the cache, are the chunk `id`.
    pub fn holds(&self, id: &ChunkId, plain: &[u8]) -> bool {
        ChunkId::of(plain) == *id
    }

    /// The largest chunk the server may send, for chunks of at most `max_len` bytes.
    pub fn wire_max_len(&self, max_len: u32) -> u32 {
        max_len
    }

    /// A chunk that arrived (already checked against its id on the wire): the file's bytes.
    pub fn open_chunk(&self, id: ChunkId, data: Bytes, _max_len: u32) -> Result<Bytes> {
        let _ = id;
        Ok(data)
    }

    /// Whether chunks may travel as deltas against chunks the receiver holds.
    pub fn chunk_deltas(&self) -> bool {
        !self.is_sealed()
    }

    /// An entry as the server receives it, committed on `base_version`.
    pub fn seal_entry(
        &self,
        e: lbsync_proto::Entry,
        _base_version: u64,
    ) -> Result<lbsync_proto::Entry> {
        Ok(e)
    }

    /// An entry from the server, in the clear (its `path` the plaintext path).
    pub fn open_entry(&self, e: lbsync_proto::Entry) -> Result<lbsync_proto::Entry> {
        Ok(e)
    }

    /// A path as the server knows it.
    pub fn seal_path(&self, p: &lbsync_proto::SyncPath) -> Result<lbsync_proto::SyncPath> {
        Ok(p.clone())
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
