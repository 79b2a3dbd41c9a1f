//! Group commit: 10,000 new small files committed through the real server (in its own process)
//! with CommitBatch, their chunks sent first; then the same count from four clients at once.
//! Reports commits per second of the CommitBatch calls alone (chunks already on the server).

#![allow(clippy::print_stdout, missing_docs)]

use std::time::Instant;

use lbsync_benches::{ChildServer, machine, quick, random_bytes, runtime, table};
use lbsync_chunkstore::{ChunkParams, Chunker, Manifest};
use lbsync_client::remote::Remote;
use lbsync_proto::{BatchOutcome, CommitRequest, Content, Entry, SyncPath, pb};

fn main() {
    if ChildServer::serve_if_child() {
        return;
    }
    runtime().block_on(run());
}

/// Sends the chunks of `files` small files named `prefix/i` and returns their commits.
async fn prepare(r: &mut Remote, prefix: &str, files: usize, seed: u64) -> Vec<CommitRequest> {
    let mut reqs = Vec::with_capacity(files);
    let (tx, handle) = r.put_chunks();
    let mut msg = pb::PutChunksRequest::default();
    for i in 0..files {
        let data = random_bytes(200 + i % 800, seed * 1_000_000 + i as u64);
        let params = ChunkParams::DEFAULT.for_file(data.len() as u64);
        let chunks: Vec<_> = Chunker::new(&data[..], params)
            .collect::<Result<_, _>>()
            .expect("chunk");
        let manifest = Manifest::new(chunks.iter().map(|(_, c)| c.chunk_ref()).collect());
        for (_, c) in &chunks {
            msg.chunks
                .push(lbsync_proto::wire::encode_chunk(c.id(), c.data()));
        }
        if msg.chunks.len() >= 512 {
            tx.send(std::mem::take(&mut msg)).await.expect("send");
        }
        let path = SyncPath::new(format!("{prefix}/{i:05}.txt")).expect("path");
        reqs.push(CommitRequest {
            folder: "default".into(),
            entry: Entry::file(path, &manifest, "bench"),
            base_version: 0,
            content: Some(Content::Full(manifest)),
        });
    }
    if !msg.chunks.is_empty() {
        tx.send(msg).await.expect("send");
    }
    drop(tx);
    handle.await.expect("join").expect("put chunks");
    reqs
}

/// Commits `reqs` with CommitBatch (4,096 a call at most); all must commit.
async fn commit(r: &mut Remote, reqs: Vec<CommitRequest>) {
    let n = reqs.len();
    let out = r.commit_batch("bench", reqs).await.expect("commit batch");
    let committed = out
        .iter()
        .filter(|o| matches!(o, BatchOutcome::Committed { .. }))
        .count();
    assert_eq!(committed, n, "{:?}", out.first());
}

async fn run() {
    let files = if quick() { 1_000 } else { 10_000 };
    let clients = 4;
    println!(
        "# group commit: {files} small files by CommitBatch — {}",
        machine()
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(&tmp.path().join("store"));
    let url = server.url();
    let mut rows = Vec::new();

    let mut r = Remote::connect(&url, None, "default", "bench")
        .await
        .expect("connect");
    let reqs = prepare(&mut r, "one", files, 1).await;
    let t0 = Instant::now();
    commit(&mut r, reqs).await;
    let secs = t0.elapsed().as_secs_f64();
    rows.push(vec![
        "one client".into(),
        format!("{files}"),
        format!("{secs:.2} s"),
        format!("{:.0}", files as f64 / secs),
    ]);

    let mut prepared = Vec::new();
    for k in 0..clients {
        let mut r = Remote::connect(&url, None, "default", "bench")
            .await
            .expect("connect");
        let reqs = prepare(&mut r, &format!("c{k}"), files / clients, 10 + k as u64).await;
        prepared.push((r, reqs));
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = prepared
        .into_iter()
        .map(|(mut r, reqs)| tokio::spawn(async move { commit(&mut r, reqs).await }))
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
    let secs = t0.elapsed().as_secs_f64();
    rows.push(vec![
        format!("{clients} clients at once"),
        format!("{}", files / clients * clients),
        format!("{secs:.2} s"),
        format!("{:.0}", (files / clients * clients) as f64 / secs),
    ]);
    let usage = server.stop();
    println!(
        "{}",
        table(&["CommitBatch", "commits", "time", "commits/s"], &rows)
    );
    println!("server peak RSS {} MB", usage.peak_rss / 1_000_000);
}
