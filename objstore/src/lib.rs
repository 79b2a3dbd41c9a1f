//! lbsync's chunk store on an S3-compatible object store: chunk bytes in immutable pack objects,
//! their locations in a [`ChunkIndex`] that several servers can share (in PostgreSQL, or a
//! [`MemIndex`] for one process and tests).
//!
//! - [`ObjectChunkStore`] implements [`lbsync_chunkstore::ChunkStore`] on any
//!   `object_store::ObjectStore` (S3, Garage, MinIO, a directory, memory).
//! - [`object_store_from_url`] opens `s3://BUCKET[/PREFIX][?endpoint=..&region=..&path_style=..]`
//!   (credentials from the AWS environment only), `file:///DIR` or `memory://`.
//! - [`ChunkIndex`], [`Location`], [`PackName`]: the index trait and what it stores.
//!
//! # Object layout
//! ```text
//! PREFIX/config                        {"format":1,"store_id":"<32 hex>","params":{...}}, written
//!                                      once by create (refused if present), read by every open
//! PREFIX/packs/<2 hex>/<32 hex>.pack   pack objects: 16 random bytes name each; written by one
//!                                      PUT, never changed, deleted only by gc
//! ```
//! A pack object holds what a `PackStore` pack file holds (`lbsync_chunkstore::pack`): the
//! 16-byte pack header, then self-describing records (56-byte header with the chunk id, lengths
//! and a checksum; the payload, zstd when that saves ≥ 1/32). So the index can always be rebuilt
//! from the packs ([`ObjectChunkStore::rebuild_index`]). A batch is cut into packs of at most
//! [`StoreOptions::pack_target`] (64 MiB), each one plain PUT, PUT concurrently.
//!
//! # Durability
//! [`lbsync_chunkstore::ChunkStore::insert_batch`] PUTs the new chunks' packs and records their
//! index entries **only after** the PUTs succeeded; it returns after both. So an acknowledged
//! chunk is in the object store (as durable as the store makes a completed PUT) and every index
//! entry points into a pack that was stored. A crash between PUT and record leaves an
//! unreferenced pack: garbage for gc, never a dangling entry.
//!
//! # Reads
//! One index lookup for a batch; then one ranged GET per run of neighbouring records of a pack
//! (gaps up to [`StoreOptions::coalesce_gap`]), concurrently. Every record is checked: header
//! checksum, agreement with the index, decompression to the right length, BLAKE3 back to the id.
//! A record that fails twice is [`Error::Corrupt`] (never wrong bytes), and the index forgets it
//! so that `missing` reports it and the next upload stores a sound copy. Checked chunks are kept
//! in a cache bounded by bytes ([`StoreOptions::cache_bytes`]).
//!
//! # Several servers on one store
//! Names are random, so no two writers ever PUT the same object and no conditional PUT is needed
//! for correctness (Garage ignores `If-None-Match`). Two servers storing the same chunk at once
//! both PUT their own pack and both answer `New`; the index's first record wins
//! ([`ChunkIndex::record`]), and the loser's copy is garbage that gc removes (or repacks away)
//! once its pack is past the grace period. Removal and relocation in the index are conditional on
//! the pack, so a collection never undoes what another server did meanwhile. Garbage collection
//! runs on one server at a time (the caller holds the lease); see the `gc` module for its steps.
//!
//! # The sync/async bridge
//! `ChunkStore` is synchronous (the server calls it from `spawn_blocking` threads) and
//! object_store is async. The store owns a two-worker tokio runtime; each method spawns a
//! `'static` future on it and waits on a std channel, which works from any thread, a
//! `spawn_blocking` thread of another runtime included, and never panics with "cannot start a
//! runtime from within a runtime". Index calls run on the caller's thread (a database client may
//! block). The runtime shuts down in the background on drop, so dropping the store in async code
//! is fine.
//!
//! ```
//! use std::sync::Arc;
//! use lbsync_chunkstore::{Chunk, ChunkParams, ChunkStore, Inserted};
//! use lbsync_objstore::{MemIndex, ObjectChunkStore, StoreOptions};
//!
//! let store = ObjectChunkStore::open_url(
//!     "memory://",
//!     Arc::new(MemIndex::new()),
//!     Some(ChunkParams::DEFAULT),
//!     StoreOptions::default(),
//! )?;
//! let chunk = Chunk::new(&b"hello, object store"[..]);
//! assert_eq!(store.insert(&chunk)?, Inserted::New);
//! assert_eq!(store.get(&chunk.id())?.as_deref(), Some(&b"hello, object store"[..]));
//! assert_eq!(store.missing(&[chunk.id()])?, vec![]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bridge;
mod cache;
mod config;
#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
mod error;
mod gc;
mod index;
mod pack;
mod read;
mod store;
mod url;

pub use config::DEFAULT_MIN_GRACE;
pub use error::{Error, Result};
pub use index::{ChunkIndex, IndexStats, Location, MemIndex, PackName};
pub use store::{ObjectChunkStore, StoreOptions};
pub use url::object_store_from_url;
