//! Scale (issue 16), in two sections.
//!
//! **Client.** For each tree size N (`LBSYNC_SCALE_FILES=10000,100000,1000000`; default 10 k and
//! 100 k; quick mode 2 k) a seeded tree of small text-like files (200 B–16 KB, ~100 a directory,
//! two levels of directories) is synced by a client in a child process, which does what
//! `lbsync-client sync` does (`ChildSync`: `Syncer::open` and `sync`, so its peak RSS is its own),
//! with a server in another, on a fresh local store: the first upload, the second device's first
//! download into an empty directory, and a no-change `sync` (the second of two); then the size of
//! `.lbsync/`. rsync to a local daemon copies the same tree in the same run, then runs again with
//! nothing changed: the yardstick. Targets: up and down ≤ 2× rsync's copy, no-change ≤ rsync's,
//! client RSS ≤ 200 B a file, `.lbsync/` ≤ 400 B a file.
//!
//! **Server memory against store size.** A store of many tiny chunks (10 a file, plus a tenth as
//! many unreferenced ones for gc to sweep) is built, then the server's peak RSS is measured in
//! separate processes while a client pushes into it, while `gc` collects it and while `fsck`
//! checks it. Target: ≤ 300 MB at 10 M chunks, and little growth from size to size.
//!
//! Sizes in chunks: `LBSYNC_SCALE_CHUNKS=1000000,4000000` (default 1 M and 3 M; quick mode 20 k).
//! The store is built straight through the store and folder APIs (no scope entries), which is
//! what takes most of the time.

#![allow(clippy::print_stdout, missing_docs)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use lbsync_benches::rsync::Rsync;
use lbsync_benches::{
    ChildServer, ChildSync, machine, peak_rss, quick, random_bytes, runtime, table,
};
use lbsync_chunkstore::{Chunk, ChunkStore, Manifest, PackStore};
use lbsync_proto::{Entry, SyncPath};
use lbsync_server::admin;
use lbsync_server::folders::SledFolders;
use lbsync_server::meta::FolderMeta;
use rand::{Rng, RngCore, SeedableRng};

/// Set in a child: `build|gc|fsck` and the store's directory (and for `build` the chunk count),
/// separated by `\x1f`.
const CHILD_VAR: &str = "LBSYNC_SCALE_CHILD";

/// Chunks a file.
const PER_FILE: usize = 10;

fn main() {
    if ChildServer::serve_if_child() || ChildSync::sync_if_child() {
        return;
    }
    if let Ok(job) = std::env::var(CHILD_VAR) {
        child(&job);
        return;
    }
    client();
    runtime().block_on(run());
}

/// The sizes to run: `var`'s comma-separated numbers, else `quick_default` in quick mode and
/// `default` otherwise.
fn sizes(var: &str, quick_default: &[usize], default: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{var}: numbers"))
            })
            .collect(),
        Err(_) if quick() => quick_default.to_vec(),
        Err(_) => default.to_vec(),
    }
}

/// The client section: one row a tree size.
fn client() {
    let sizes = sizes("LBSYNC_SCALE_FILES", &[2_000], &[10_000, 100_000]);
    println!(
        "# client: sync of many small files, beside rsync — {}",
        machine()
    );
    let mut rows = Vec::new();
    let mut had_rsync = true;
    for &n in &sizes {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let t0 = Instant::now();
        let bytes = small_files(&a, n, 16);
        let gen_secs = t0.elapsed().as_secs_f64();
        std::fs::create_dir_all(&b).expect("mkdir");

        let server = ChildServer::start(&tmp.path().join("store"));
        let url = server.url();
        let up = ChildSync::run(&a, &url, "a");
        let down = ChildSync::run(&b, &url, "b");
        ChildSync::run(&a, &url, "a");
        let unchanged = ChildSync::run(&a, &url, "a");
        let srv = server.stop();
        let (state_bytes, state_files) = disk_usage(&a.join(".lbsync"));

        let rsync = Rsync::start(tmp.path());
        had_rsync &= rsync.is_some();
        let (rsync_up, rsync_unchanged) = match &rsync {
            Some(r) => {
                let t = Instant::now();
                r.push(&a, "tree", false);
                let copy = t.elapsed().as_secs_f64();
                let t = Instant::now();
                r.push(&a, "tree", false);
                (Some(copy), Some(t.elapsed().as_secs_f64()))
            }
            None => (None, None),
        };
        println!(
            "{n} files, {:.0} MB, generated in {gen_secs:.1} s; upload: {}; download: {}; \
             no-change: {}; server peak RSS {} MB",
            bytes as f64 / 1e6,
            up.report,
            down.report,
            unchanged.report,
            srv.peak_rss / 1_000_000
        );

        let secs = |s: f64| format!("{s:.2} s");
        let ratio = |s: f64, r: Option<f64>| r.map_or("-".into(), |r| format!("{:.1}×", s / r));
        let rss = |b: u64| format!("{} MB ({} B)", b / 1_000_000, b / n as u64);
        rows.push(vec![
            format!("{n} ({:.0} MB)", bytes as f64 / 1e6),
            secs(up.seconds),
            rsync_up.map_or("-".into(), secs),
            ratio(up.seconds, rsync_up),
            secs(down.seconds),
            ratio(down.seconds, rsync_up),
            secs(unchanged.seconds),
            rsync_unchanged.map_or("-".into(), secs),
            ratio(unchanged.seconds, rsync_unchanged),
            rss(up.peak_rss),
            rss(down.peak_rss),
            format!("{} ({state_files} files)", state_bytes / n as u64),
        ]);
    }
    println!(
        "\n{}",
        table(
            &[
                "files (tree)",
                "lbsync up",
                "rsync up",
                "ratio",
                "lbsync down",
                "ratio to rsync copy",
                "no-change lbsync",
                "no-change rsync",
                "ratio",
                "client peak RSS up (B a file)",
                "down (B a file)",
                ".lbsync/ B a file on disk",
            ],
            &rows
        )
    );
    println!(
        "targets: up ≤ 2× rsync, down ≤ 2× rsync, no-change ≤ rsync, client RSS ≤ 200 B a file, \
         .lbsync/ ≤ 400 B a file"
    );
    if !had_rsync {
        println!("(rsync is not installed: its columns are skipped; `apt-get install rsync`)");
    }
    println!();
}

/// `files` small files of text-like content under `root`, the same for the same seed: sizes
/// log-uniform in 200 B–16 KB (most a few KB), ~100 a directory in two levels of directories,
/// lines of words drawn with a skewed distribution from a seeded vocabulary, so that they compress
/// as text does. Returns the bytes written.
fn small_files(root: &Path, files: usize, seed: u64) -> u64 {
    const PER_DIR: usize = 100;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let vocabulary: Vec<String> = (0..2000)
        .map(|_| {
            (0..rng.random_range(1..10))
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect()
        })
        .collect();
    let leaves = files.div_ceil(PER_DIR);
    let fan_out = (leaves as f64).sqrt().ceil().max(1.0) as usize;
    let mut total = 0;
    let mut text = String::new();
    for i in 0..files {
        let leaf = i / PER_DIR;
        let dir = root.join(format!("d{:03}/d{:03}", leaf / fan_out, leaf % fan_out));
        if i % PER_DIR == 0 {
            std::fs::create_dir_all(&dir).expect("mkdir");
        }
        let len = (200f64 * rng.random_range(0f64..80f64.ln()).exp()) as usize;
        text.clear();
        while text.len() < len {
            for _ in 0..rng.random_range(3..14) {
                // Cubed: the first words of the vocabulary are by far the most frequent.
                let x: f64 = rng.random();
                text.push_str(&vocabulary[(x * x * x * vocabulary.len() as f64) as usize]);
                text.push(' ');
            }
            text.push('\n');
        }
        text.truncate(len);
        std::fs::write(dir.join(format!("f{i:07}.txt")), &text).expect("write");
        total += len as u64;
    }
    total
}

/// Bytes on disk (allocated blocks) and the number of files under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
            }
        }
    }
    (bytes, files)
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
    let sizes = sizes("LBSYNC_SCALE_CHUNKS", &[20_000], &[1_000_000, 3_000_000]);
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
