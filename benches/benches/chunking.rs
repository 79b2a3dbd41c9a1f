//! Chunk + hash throughput from memory, single-threaded and pipelined, at each candidate
//! average chunk size.

#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lbsync_benches::{quick, random_bytes};
use lbsync_chunkstore::{ChunkParams, Chunker, Error, chunk_pipelined};

fn chunking(c: &mut Criterion) {
    let len = if quick() { 8 << 20 } else { 256 << 20 };
    let data = random_bytes(len, 42);
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
    }
    group.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);
