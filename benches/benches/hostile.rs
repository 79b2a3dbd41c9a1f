//! Hostile load: while hostile clients send amplification attempts as fast as the server answers
//! them (delta bombs, manifests that do not fit their file, batches of bombs, long histories,
//! replays from the start), honest clients push and commit files through the same server (in its
//! own process), as the load bench's do. Reports the honest commits' p50/p99 latency, the hostile
//! requests answered, and the server's peak RSS.
//! Target (issue 15): honest commit p99 < 1 s and server RSS < 300 MB over 60 s.

#![allow(clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lbsync_benches::{ChildServer, machine, quick, random_bytes, runtime, table};
use lbsync_chunkstore::{ChunkParams, Chunker, DeltaOp, Manifest, ManifestDelta};
use lbsync_client::remote::{Committed, Remote};
use lbsync_proto::pb::sync_client::SyncClient;
use lbsync_proto::{CommitOutcome, CommitRequest, Content, Entry, SyncPath, pb};
use tokio::sync::Mutex;

const HONEST: usize = 4;
const HOSTILE: usize = 4;

fn main() {
    if ChildServer::serve_if_child() {
        return;
    }
    runtime().block_on(run());
}

async fn run() {
    let secs = if quick() { 2 } else { 60 };
    println!(
        "# hostile: {HOSTILE} hostile clients flood, {HONEST} honest clients commit, for {secs} s — {}",
        machine()
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(&tmp.path().join("store"));
    let url = server.url();
    // The base the bombs copy: a 256 KiB file, committed honestly.
    let base = {
        let mut r = Remote::connect(&url, None, "default", "setup")
            .await
            .expect("connect");
        push_and_commit(&mut r, "base.bin", &random_bytes(256 << 10, 1), 0, "setup")
            .await
            .expect("base commit")
            .1
    };
    let end = Instant::now() + Duration::from_secs(secs);
    let answered = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let hostile: Vec<_> = (0..HOSTILE)
        .map(|k| {
            let (url, base) = (url.clone(), base.clone());
            let (answered, accepted) = (answered.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut c = SyncClient::connect(url)
                    .await
                    .expect("connect")
                    .max_decoding_message_size(64 << 20);
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    if attack(&mut c, &base, k, i).await {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let latency = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let honest: Vec<_> = (0..HONEST)
        .map(|i| {
            let (url, latency, errors) = (url.clone(), latency.clone(), errors.clone());
            tokio::spawn(async move {
                let device = format!("honest{i}");
                let mut r = match Remote::connect(&url, None, "default", &device).await {
                    Ok(r) => r,
                    Err(e) => return errors.lock().await.push(e.to_string()),
                };
                let mut round = 0u64;
                let mut version = 0;
                while Instant::now() < end {
                    round += 1;
                    let data = random_bytes(64 << 10, 1000 * i as u64 + round);
                    match push_and_commit(&mut r, &format!("h{i}/f.bin"), &data, version, &device)
                        .await
                    {
                        Ok((v, _, took)) => {
                            version = v;
                            latency.lock().await.push(took);
                        }
                        Err(e) => errors.lock().await.push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for t in hostile.into_iter().chain(honest) {
        t.await.expect("client task");
    }
    let usage = server.stop();
    let mut l = Arc::try_unwrap(latency).expect("done").into_inner();
    l.sort();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
    };
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3));
    let errors = Arc::try_unwrap(errors).expect("done").into_inner();
    println!(
        "{}",
        table(
            &[
                "honest commits",
                "p50 commit",
                "p99 commit",
                "hostile answered",
                "hostile accepted",
                "errors",
                "server peak RSS",
                "server CPU s"
            ],
            &[vec![
                l.len().to_string(),
                ms(pct(0.5)),
                ms(pct(0.99)),
                answered.load(Ordering::Relaxed).to_string(),
                accepted.load(Ordering::Relaxed).to_string(),
                errors.len().to_string(),
                format!("{} MB", usage.peak_rss / 1_000_000),
                format!("{:.1}", usage.cpu_seconds),
            ]]
        )
    );
    let met = errors.is_empty()
        && pct(0.99).is_some_and(|d| d < Duration::from_secs(1))
        && usage.peak_rss < 300_000_000
        && accepted.load(Ordering::Relaxed) == 0;
    println!(
        "target: no honest errors, honest p99 < 1 s, server RSS < 300 MB, no attack accepted: {}",
        if met { "met" } else { "MISSED" }
    );
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
}

/// Chunks `data` as the client does, sends what the server lacks, commits it on `version`; the
/// time is the Commit call's.
async fn push_and_commit(
    r: &mut Remote,
    path: &str,
    data: &[u8],
    version: u64,
    device: &str,
) -> anyhow::Result<(u64, Manifest, Duration)> {
    let params = ChunkParams::DEFAULT.for_file(data.len() as u64);
    let chunks: Vec<_> = Chunker::new(data, params).collect::<Result<_, _>>()?;
    let manifest = Manifest::new(chunks.iter().map(|(_, c)| c.chunk_ref()).collect());
    let ids: Vec<_> = chunks.iter().map(|(_, c)| c.id()).collect();
    let missing = r.missing(&ids).await?;
    let (tx, handle) = r.put_chunks();
    for (_, c) in chunks.iter().filter(|(_, c)| missing.contains(&c.id())) {
        tx.send(pb::PutChunksRequest {
            chunks: vec![lbsync_proto::wire::encode_chunk(c.id(), c.data())],
            ..Default::default()
        })
        .await?;
    }
    drop(tx);
    handle.await??;
    let req = CommitRequest {
        folder: "default".into(),
        entry: Entry::file(SyncPath::new(path)?, &manifest, device),
        base_version: version,
        content: Some(Content::Full(manifest.clone())),
    };
    let t0 = Instant::now();
    let answer = r.commit(req).await?;
    let took = t0.elapsed();
    match answer {
        Committed::Outcome(CommitOutcome::Committed(e)) => Ok((e.version, manifest, took)),
        Committed::Outcome(CommitOutcome::Conflict(e)) => {
            anyhow::bail!("honest commit conflicted with v{}", e.version)
        }
        Committed::MissingChunks(ids) => {
            anyhow::bail!("the server lacks {} chunks sent", ids.len())
        }
        Committed::UnknownManifest => anyhow::bail!("unknown manifest on a full commit"),
    }
}

/// One hostile request, by turns of `i`; true if the server took it (it must not).
async fn attack(
    c: &mut SyncClient<tonic::transport::Channel>,
    base: &Manifest,
    k: usize,
    i: u64,
) -> bool {
    let bomb = |times: usize, size: u64| -> pb::CommitRequest {
        let n = base.chunks().len() as u32;
        let delta = ManifestDelta {
            ops: vec![DeltaOp::Copy { start: 0, count: n }; times],
        };
        let path = SyncPath::new(format!("bomb{k}")).expect("path");
        let mut entry = Entry::file(path, base, "hostile");
        entry.size = size;
        CommitRequest {
            folder: "default".into(),
            entry,
            base_version: 0,
            content: Some(Content::Delta {
                base: base.id(),
                delta,
            }),
        }
        .into()
    };
    match i % 6 {
        // A few hundred bytes that once built 16 M refs, declared at the base's size.
        0 => c.commit(bomb(4096, base.size())).await.is_ok(),
        // The same declared at a size that allows it: over the per-commit limit.
        1 => c.commit(bomb(1 << 16, base.size() << 16)).await.is_ok(),
        // Lengths that walk the whole result and then do not add up.
        2 => c
            .commit(bomb(1 << 10, (base.size() << 10) + 1))
            .await
            .is_ok(),
        // A batch of 4096 bombs.
        3 => {
            let commits = (0..4096).map(|_| bomb(1, base.size() + 1)).collect();
            let r = c
                .commit_batch(pb::CommitBatchRequest {
                    folder: "default".into(),
                    device: "hostile".into(),
                    commits,
                })
                .await;
            r.is_ok_and(|r| {
                r.into_inner()
                    .results
                    .iter()
                    .any(|r| matches!(r.result, Some(pb::commit_result::Result::Committed(_))))
            })
        }
        // The longest history there is.
        4 => {
            let _ = c
                .history(pb::HistoryRequest {
                    folder: "default".into(),
                    path: bytes::Bytes::from_static(b"base.bin"),
                    version: 0,
                    raw_path: Default::default(),
                })
                .await;
            false
        }
        // A replay from the start, read to the end.
        _ => {
            if let Ok(s) = c
                .changes(pb::ChangesRequest {
                    folder: "default".into(),
                    cursor: 0,
                    ..Default::default()
                })
                .await
            {
                let mut s = s.into_inner();
                while let Ok(Some(m)) = s.message().await {
                    if m.caught_up {
                        break;
                    }
                }
            }
            false
        }
    }
}
