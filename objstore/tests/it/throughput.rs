//! Throughput of inserts and batched reads (ignored; run it by hand):
//! `cargo test -p lbsync-objstore --test it -- --ignored throughput --nocapture`
//! (`LBSYNC_OBJSTORE_MIB` sets the size, default 256, `LBSYNC_OBJSTORE_SPAN` the longest
//! coalesced GET; with `LBSYNC_TEST_STORE` set it also runs against that S3 store).

use std::sync::Arc;
use std::time::Instant;

use lbsync_chunkstore::{Chunk, ChunkId, ChunkParams, ChunkStore, contract};
use lbsync_objstore::{MemIndex, ObjectChunkStore, StoreOptions};

fn measure(label: &str, url: &str, mib: usize) {
    let store = ObjectChunkStore::open_url(
        url,
        Arc::new(MemIndex::new()),
        Some(ChunkParams::DEFAULT),
        StoreOptions {
            // Reads must reach the object store, not the cache.
            cache_bytes: 0,
            max_span: std::env::var("LBSYNC_OBJSTORE_SPAN")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(StoreOptions::default().max_span),
            ..StoreOptions::default()
        },
    )
    .expect("the store opens");
    let chunks: Vec<Chunk> = (0..mib * 16)
        .map(|n| contract::noise_chunk(label, n as u32, 64 << 10).keep_raw())
        .collect();
    let bytes = (mib << 20) as f64;
    let start = Instant::now();
    // 4 MiB batches, as the server stores them.
    for batch in chunks.chunks(64) {
        store.insert_batch(batch).expect("insert");
    }
    let put = start.elapsed().as_secs_f64();
    let ids: Vec<ChunkId> = chunks.iter().map(|c| c.id()).collect();
    let start = Instant::now();
    let mut read = 0usize;
    for batch in ids.chunks(64) {
        read += store
            .get_batch(batch)
            .expect("get_batch")
            .iter()
            .map(|b| b.as_ref().expect("stored").len())
            .sum::<usize>();
    }
    let get = start.elapsed().as_secs_f64();
    assert_eq!(read, mib << 20);
    let start = Instant::now();
    for id in ids.iter().step_by(16) {
        store.get(id).expect("get").expect("stored");
    }
    let single = start.elapsed().as_secs_f64() / (ids.len() / 16) as f64;
    eprintln!(
        "{label}: {mib} MiB of 64 KiB chunks: insert {:.0} MiB/s, get_batch(64) {:.0} MiB/s, \
         one get {:.2} ms",
        bytes / put / 1048576.0,
        bytes / get / 1048576.0,
        single * 1000.0
    );
}

#[test]
#[ignore]
fn throughput() {
    let mib: usize = std::env::var("LBSYNC_OBJSTORE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    measure("memory", "memory://", mib);
    let dir = tempfile::tempdir().unwrap();
    measure("file", &format!("file://{}/s", dir.path().display()), mib);
    if let Ok(base) = std::env::var("LBSYNC_TEST_STORE") {
        let (path, query) = base.split_once('?').unwrap_or((&base, ""));
        let url = format!(
            "{}/throughput-{}?{query}",
            path.trim_end_matches('/'),
            std::process::id()
        );
        measure("s3", &url, mib);
    }
}
