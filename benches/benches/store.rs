//! Store throughput: batch insert of new 64 KiB random chunks (packs + fsync + the index, which is
//! written behind the packs and timed until it has caught up) and `missing()` lookups, with peak
//! memory. Prints a table.
//!
//! Targets (issue "cargo bench"): ≥ 500 MiB/s insert, ≥ 1 M lookups/s, RSS < 100 MB.

#![allow(clippy::print_stdout, missing_docs)]

use std::time::Instant;

use lbsync_benches::{machine, peak_rss, quick, random_bytes, table};
use lbsync_chunkstore::{Chunk, ChunkId, ChunkStore, PackStore};

fn main() {
    let total: usize = if quick() { 64 << 20 } else { 2 << 30 };
    let chunk_size = 64 << 10;
    let batch_chunks = 128; // 8 MiB a batch, one fsync each
    println!("# store throughput — {}", machine());
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PackStore::open(dir.path()).expect("open store");

    // Input is made on a second thread, as a server's network tasks would hand it over: a pool of
    // random bytes, each chunk a window of it with a unique counter in front, so every chunk is
    // new and incompressible without generating gigabytes up front.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Chunk>>(1);
    let producer = std::thread::spawn(move || {
        let pool = random_bytes(8 << 20, 1);
        let mut n = 0usize;
        for _ in 0..total / (batch_chunks * chunk_size) {
            let batch: Vec<Chunk> = (0..batch_chunks)
                .map(|_| {
                    let at = (n * 4099) % (pool.len() - chunk_size);
                    let mut data = pool[at..at + chunk_size].to_vec();
                    data[..8].copy_from_slice(&(n as u64).to_le_bytes());
                    n += 1;
                    Chunk::new(data)
                })
                .collect();
            if tx.send(batch).is_err() {
                break;
            }
        }
    });
    let mut ids = Vec::with_capacity(total / chunk_size);
    let mut written = 0usize;
    let start = Instant::now();
    for batch in rx {
        ids.extend(batch.iter().map(|c| c.id()));
        store.insert_batch(&batch).expect("insert");
        written += batch.len() * chunk_size;
    }
    producer.join().expect("producer");
    // The index is written behind the packs: the clock stops once it has caught up.
    store.flush().expect("flush");
    let insert_secs = start.elapsed().as_secs_f64();
    let insert_mib_s = written as f64 / (1 << 20) as f64 / insert_secs;
    let rss_insert = peak_rss();

    // Lookups: half present, half absent, in batches as the server asks them.
    let absent: Vec<ChunkId> = (0..ids.len())
        .map(|i| ChunkId::of(&(i as u64 ^ 0xdead).to_le_bytes()))
        .collect();
    let mut queries = Vec::with_capacity(ids.len() * 2);
    for (a, b) in ids.iter().zip(&absent) {
        queries.push(*a);
        queries.push(*b);
    }
    let rounds = if quick() { 5 } else { 20 };
    let start = Instant::now();
    let mut found_missing = 0;
    for _ in 0..rounds {
        for q in queries.chunks(4096) {
            found_missing += store.missing(q).expect("missing").len();
        }
    }
    let lookups = (queries.len() * rounds) as f64 / start.elapsed().as_secs_f64();
    assert_eq!(found_missing, absent.len() * rounds);

    let rows = vec![
        vec![
            "batch insert, 64 KiB random chunks".into(),
            format!("{:.0} MiB/s", insert_mib_s),
            format!("{} MiB in {:.2} s", written >> 20, insert_secs),
            format!("{} MB", rss_insert / 1_000_000),
        ],
        vec![
            "missing() lookups, half present".into(),
            format!("{:.2} M/s", lookups / 1e6),
            format!("{} ids × {rounds}", queries.len()),
            format!("{} MB", peak_rss() / 1_000_000),
        ],
    ];
    println!("{}", table(&["what", "rate", "work", "peak RSS"], &rows));
}
