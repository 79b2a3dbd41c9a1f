//! The chunk store contract, and the object store's own checks, against a real S3 service.

use std::sync::Arc;

use lbsync_chunkstore::{ChunkParams, ChunkStore, Inserted, contract};
use lbsync_objstore::{MemIndex, ObjectChunkStore, StoreOptions};

use lbsync_testsupport::services::s3;

#[test]
fn the_contract_holds_on_s3() {
    let Some(service) = s3("the_contract_holds_on_s3") else {
        return;
    };
    let store = ObjectChunkStore::open_url(
        &service.url,
        Arc::new(MemIndex::new()),
        Some(ChunkParams::DEFAULT),
        StoreOptions {
            pack_target: 256 << 10,
            // The contract collects with no grace period.
            min_grace: std::time::Duration::ZERO,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    contract::run(&store, "s3").unwrap();
}

#[test]
fn a_second_server_sees_the_first_ones_chunks_through_a_shared_index() {
    let Some(service) = s3("a_second_server_sees") else {
        return;
    };
    let index = Arc::new(MemIndex::new());
    let one = ObjectChunkStore::open_url(
        &service.url,
        index.clone(),
        Some(ChunkParams::DEFAULT),
        StoreOptions::default(),
    )
    .unwrap();
    let two =
        ObjectChunkStore::open_url(&service.url, index, None, StoreOptions::default()).unwrap();
    assert_eq!(one.store_id(), two.store_id());
    let chunk = contract::noise_chunk("shared", 1, 100_000);
    assert_eq!(one.insert(&chunk).unwrap(), Inserted::New);
    assert_eq!(two.insert(&chunk).unwrap(), Inserted::AlreadyPresent);
    assert_eq!(two.get(&chunk.id()).unwrap().as_ref(), Some(chunk.data()));
    // A third with its own (empty) index rebuilds it from the packs.
    let three = ObjectChunkStore::open_url(
        &service.url,
        Arc::new(MemIndex::new()),
        None,
        StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(three.rebuild_index().unwrap(), 1);
    assert_eq!(three.get(&chunk.id()).unwrap().as_ref(), Some(chunk.data()));
}
