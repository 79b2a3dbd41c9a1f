//! Server memory against store size (issue 16): a store of many tiny chunks (10 a file, plus a
//! tenth as many unreferenced ones for gc to sweep) is built, then the server's peak RSS is
//! measured in separate processes while a client pushes into it, while `gc` collects it and while
//! `fsck` checks it. Target: ≤ 300 MB at 10 M chunks, and little growth from size to size.
//!
//! Sizes in chunks: `LBSYNC_SCALE_CHUNKS=1000000,4000000` (default 1 M and 3 M; quick mode 20 k).
//! The store is built straight through the store and folder APIs (no scope entries), which is
//! what takes most of the time.

#![allow(clippy::print_stdout, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use lbsync_benches::{ChildServer, machine, peak_rss, quick, random_bytes, runtime, table};
use lbsync_chunkstore::{Chunk, ChunkStore, Manifest, PackStore};
use lbsync_proto::{Entry, SyncPath};
use lbsync_server::admin;
use lbsync_server::folders::SledFolders;
use lbsync_server::meta::FolderMeta;
use rand::{RngCore, SeedableRng};

/// Set in a child: `build|gc|fsck` and the store's directory (and for `build` the chunk count),
/// separated by `\x1f`.
const CHILD_VAR: &str = "LBSYNC_SCALE_CHILD";

/// Chunks a file.
const PER_FILE: usize = 10;

fn main() {
    if ChildServer::serve_if_child() {
        return;
    }
    if let Ok(job) = std::env::var(CHILD_VAR) {
        child(&job);
        return;
    }
    runtime().block_on(run());
}

/// Runs one job in this (child) process and prints its peak RSS and what it reports.
fn child(job: &str) {
    let parts: Vec<&str> = job.split('\x1f').collect();
    let dir = Path::new(parts[1]);
    let t0 = Instant::now();
    let what = match parts[0] {
        "build" => {
            let chunks: usize = parts[2].parse().expect("chunks");
            build(dir, chunks);
            String::from("built")
        }
        "gc" => {
            let store = PackStore::open(dir).expect("open");
            let gc = admin::gc(
                &store.clone().try_into().expect("backend"),
                admin::Retention::default(),
                Duration::ZERO,
                false,
            )
            .expect("gc");
            format!(
                "swept {} chunks, {} live",
                gc.store.swept_chunks, gc.store.live_chunks
            )
        }
        "fsck" => {
            let store = PackStore::open(dir).expect("open");
            let f = admin::fsck(&store, false).expect("fsck");
            assert!(f.is_clean(), "{f}");
            format!("{} records clean", f.store.records)
        }
        other => panic!("no job {other}"),
    };
    println!("{} {:.1} {what}", peak_rss(), t0.elapsed().as_secs_f64());
}

/// `chunks` tiny chunks in files of [`PER_FILE`], committed in folder `default`, and a tenth as
/// many unreferenced chunks.
fn build(dir: &Path, chunks: usize) {
    let store = PackStore::open(dir).expect("open");
    let folders = SledFolders::open(store.db()).expect("folders");
    // An empty store's scopes are built at once; the bench's files stay out of them.
    lbsync_server::scope::SledScopes::open(&store, &folders).expect("scopes");
    folders.ensure("default").expect("folder");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    let files = chunks / PER_FILE;
    let per_batch = 1000;
    let mut data = [0u8; 48];
    for first in (0..files).step_by(per_batch) {
        let n = per_batch.min(files - first);
        let mut batch = Vec::with_capacity(n * PER_FILE);
        let mut manifests = Vec::with_capacity(n);
        let mut commits = Vec::with_capacity(n);
        for i in first..first + n {
            let start = batch.len();
            for _ in 0..PER_FILE {
                rng.fill_bytes(&mut data);
                batch.push(Chunk::new(bytes::Bytes::copy_from_slice(&data)));
            }
            let m = Manifest::new(batch[start..].iter().map(Chunk::chunk_ref).collect());
            let path = SyncPath::new(format!("d{:04}/f{i:07}", i / 1000)).expect("path");
            commits.push((Entry::file(path, &m, "scale"), 0));
            manifests.push(Chunk::new(m.encode()));
        }
        for _ in 0..n * PER_FILE / 10 {
            rng.fill_bytes(&mut data);
            batch.push(Chunk::new(bytes::Bytes::copy_from_slice(&data)));
        }
        batch.extend(manifests);
        store.insert_batch(&batch).expect("insert");
        let (_, failed) = folders.commit_batch("default", commits).expect("commit");
        assert!(failed.is_none());
    }
    store.flush().expect("flush");
}

/// Runs a child job and returns (peak RSS bytes, seconds, its report).
fn job(args: &[&str]) -> (u64, f64, String) {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env(CHILD_VAR, args.join("\x1f"))
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut f = line.splitn(3, ' ');
    let rss = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let secs = f.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (rss, secs, f.next().unwrap_or("").to_owned())
}

async fn run() {
    let sizes: Vec<usize> = match std::env::var("LBSYNC_SCALE_CHUNKS") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse().expect("LBSYNC_SCALE_CHUNKS: numbers"))
            .collect(),
        Err(_) if quick() => vec![20_000],
        Err(_) => vec![1_000_000, 3_000_000],
    };
    println!("# server memory by store size — {}", machine());
    let mut rows = Vec::new();
    for &chunks in &sizes {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let s = store.to_str().expect("utf-8 path");
        let (_, build_secs, _) = job(&["build", s, &chunks.to_string()]);

        // A push of 2,000 small files and one of 32 MiB into the big store.
        let src = tmp.path().join("client");
        std::fs::create_dir_all(src.join("small")).expect("mkdir");
        for i in 0..2000u64 {
            std::fs::write(
                src.join(format!("small/{i:04}.txt")),
                random_bytes(200 + (i as usize % 4000), i),
            )
            .expect("write");
        }
        std::fs::write(src.join("big.bin"), random_bytes(32 << 20, 7)).expect("write");
        let server = ChildServer::start(&store);
        let t0 = Instant::now();
        lbsync_benches::sync(&src, &server.url(), "pusher", "default").await;
        let push_secs = t0.elapsed().as_secs_f64();
        let push = server.stop();

        let (gc_rss, gc_secs, gc_what) = job(&["gc", s]);
        let (fsck_rss, fsck_secs, fsck_what) = job(&["fsck", s]);
        let mb = |b: u64| format!("{} MB", b / 1_000_000);
        rows.push(vec![
            format!("{chunks}"),
            format!("{build_secs:.0} s"),
            format!("{} ({push_secs:.1} s)", mb(push.peak_rss)),
            format!("{} ({gc_secs:.1} s; {gc_what})", mb(gc_rss)),
            format!("{} ({fsck_secs:.1} s; {fsck_what})", mb(fsck_rss)),
        ]);
    }
    println!(
        "{}",
        table(
            &[
                "chunks in files",
                "build",
                "server peak RSS: push",
                "gc",
                "fsck"
            ],
            &rows
        )
    );
}
