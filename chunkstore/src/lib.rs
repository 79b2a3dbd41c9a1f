//! lbsync's chunk store: content-defined chunking, BLAKE3 chunk ids, manifests, and a durable
//! content-addressed store that keeps each distinct chunk once.
//!
//! - [`Chunker`] / [`chunk_pipelined`] cut a byte stream with FastCDC v2020 ([`ChunkParams`]) into
//!   [`Chunk`]s named by their BLAKE3 hash ([`ChunkId`]).
//! - [`Manifest`] lists a file's chunks, with a stable encoding whose hash is the [`ManifestId`];
//!   [`ManifestDelta`] expresses a manifest against a base one, so small edits stay small on the wire.
//! - [`ChunkStore`] is the store interface; [`PackStore`] keeps chunk bytes in append-only pack
//!   files indexed in sled (see its module docs for the on-disk layout, durability and
//!   concurrency), [`MemStore`] keeps them in memory for tests.
//!
//! This crate is synchronous and knows nothing of the network.
//!
//! # Invariants
//! - Chunk boundaries are a compatibility contract: fastcdc is pinned and a golden test pins the cut
//!   points of a seeded input.
//! - Ids are verified, never trusted: a [`Chunk`] can only be made by hashing its bytes, and reads
//!   re-hash what comes off the disk.
//!
//! ```
//! use lbsync_chunkstore::{ChunkParams, ChunkStore, Chunker, Manifest, ChunkRef, MemStore};
//!
//! let data = vec![7u8; 100_000];
//! let store = MemStore::new(ChunkParams::DEFAULT);
//! let mut refs = Vec::new();
//! for item in Chunker::new(&data[..], store.params()) {
//!     let (_offset, chunk) = item?;
//!     store.insert(&chunk)?;
//!     refs.push(ChunkRef { id: chunk.id(), len: chunk.len() as u32 });
//! }
//! let manifest = Manifest::new(refs);
//! assert_eq!(manifest.size(), 100_000);
//! let id = store.put_manifest(&manifest)?;
//! assert_eq!(store.get_manifest(&id)?, Some(manifest));
//! # Ok::<(), lbsync_chunkstore::Error>(())
//! ```

mod chunk;
mod chunker;
mod compress;
#[cfg(any(test, feature = "contract-tests"))]
#[doc(hidden)]
pub mod contract;
mod delta;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod id;
mod manifest;
mod mask;
mod mem;
pub mod pack;
#[cfg(feature = "sled")]
mod pack_store;
mod params;
mod shape;
mod signature;
mod store;

pub use chunk::Chunk;
pub use chunker::{
    BLOCK_SIZE, Chunker, Cutter, NORMALIZATION, Piece, chunk_pipelined, cut_pipelined,
};
pub use compress::{
    CompressProbe, DOWNLOAD_TOGETHER_LEVEL, TOGETHER_LEVEL, compress_against, compress_frame,
    compress_if_smaller, compress_together, compress_together_at, decompress, decompress_against,
};
pub use delta::{DeltaOp, ManifestDelta, edit_bases};
pub use error::{Error, Result};
pub use id::{ChunkId, ManifestId};
pub use manifest::{ChunkRef, MANIFEST_VERSION, MAX_MANIFEST_BYTES, MAX_MANIFEST_CHUNKS, Manifest};
pub use mask::{LengthMask, MAX_MASKED_LEN};
pub use mem::MemStore;
#[cfg(feature = "sled")]
pub use pack_store::{FsckProblem, FsckReport, PackStore, RecoveryReport, StoreOptions};
pub use params::{ChunkParams, MAX_CHUNK_LIMIT};
pub use shape::{check_delta, check_manifest, delta_chunk_count, max_chunks_for};
pub use signature::{
    MAX_BLOCK_SIZE, STRONG_LEN, Signature, apply_block_delta, block_delta, block_size_for,
    max_ops_len, weak_sum,
};
pub use store::{ChunkStore, GcOptions, GcReport, Inserted, StoreStats};
