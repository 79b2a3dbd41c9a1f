//! Chunk + hash throughput at each candidate average chunk size: from memory, single-threaded and
//! pipelined (cut on one thread, hash on another), and pipelined from a file in the page cache,
//! as the client reads one. Target: ≥ 2.0 GB/s from page cache on two threads at 8 KiB.

#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lbsync_benches::{quick, random_bytes};
use lbsync_chunkstore::{ChunkParams, Chunker, Error, chunk_pipelined};

fn chunking(c: &mut Criterion) {
    let len = if quick() { 8 << 20 } else { 256 << 20 };
    let data = random_bytes(len, 42);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data.bin");
    std::fs::write(&file, &data).expect("write");
    let mut group = c.benchmark_group("chunk+hash");
    group.throughput(Throughput::Bytes(len as u64));
    group.sample_size(10);
    if quick() {
        group.warm_up_time(std::time::Duration::from_millis(100));
        group.measurement_time(std::time::Duration::from_millis(300));
    }
    for (name, params) in [
        ("8K", ChunkParams::LBFS),
        ("16K", ChunkParams::AVG_16K),
        ("64K", ChunkParams::AVG_64K),
    ] {
        group.bench_with_input(BenchmarkId::new("one thread", name), &params, |b, p| {
            b.iter(|| {
                Chunker::new(&data[..], *p)
                    .map(|r| r.map(|(_, c)| c.len()))
                    .sum::<Result<usize, Error>>()
            })
        });
        group.bench_with_input(BenchmarkId::new("pipelined", name), &params, |b, p| {
            b.iter(|| {
                let mut n = 0usize;
                chunk_pipelined::<_, Error>(&data[..], *p, |_, c| {
                    n += c.len();
                    Ok(())
                })
                .map(|()| n)
            })
        });
        group.bench_with_input(
            BenchmarkId::new("pipelined, page cache", name),
            &params,
            |b, p| {
                b.iter(|| {
                    let mut n = 0usize;
                    let f = std::fs::File::open(&file).expect("open");
                    chunk_pipelined::<_, Error>(f, *p, |_, c| {
                        n += c.len();
                        Ok(())
                    })
                    .map(|()| n)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);
