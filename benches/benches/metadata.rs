//! Bytes on the wire for metadata-only changes, counted at the socket (gRPC and HTTP/2 framing,
//! handshakes and the Changes replay included), on a tree of small files synced between two
//! devices: every file touched (a new mtime, the same bytes), and a new release unpacked over the
//! old one (every mtime changes, ~2% of the files' bytes). The receiver must rewrite only the
//! files whose bytes changed: a file whose inode stayed was applied in place.
//! `LBSYNC_BENCH_QUICK=1` runs it on 500 files instead of 5,000.

#![allow(clippy::print_stdout, missing_docs)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lbsync_benches::{
    BenchServer, CountingProxy, machine, quick, runtime, source_tree, sync, table,
};
use lbsync_chunkstore::ChunkParams;
use rand::{Rng, SeedableRng};

fn main() {
    runtime().block_on(run());
}

/// Each file's inode, by path.
fn inodes(root: &Path, files: &[PathBuf], a: &Path) -> BTreeMap<PathBuf, u64> {
    files
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(a).expect("under a");
            let ino = std::fs::metadata(root.join(rel)).map_or(0, |m| m.ino());
            (rel.to_path_buf(), ino)
        })
        .collect()
}

fn set_mtime(p: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(p)
        .and_then(|f| f.set_modified(t))
        .expect("set mtime");
}

/// One measured change: A syncs it up, B syncs it down.
struct Measured {
    what: &'static str,
    files: usize,
    up: (u64, u64),
    down: (u64, u64),
    rewritten: usize,
    content_changed: usize,
    in_place: u64,
}

async fn measure(
    what: &'static str,
    (a, b): (&Path, &Path),
    files: &[PathBuf],
    proxy: &CountingProxy,
    content_changed: usize,
) -> Measured {
    let before = inodes(b, files, a);
    proxy.take();
    sync(a, &proxy.url, "a", "tree").await;
    let up = proxy.take();
    let r = sync(b, &proxy.url, "b", "tree").await;
    let down = proxy.take();
    let after = inodes(b, files, a);
    let rewritten = before
        .iter()
        .filter(|(p, i)| after.get(*p) != Some(i))
        .count();
    Measured {
        what,
        files: files.len(),
        up,
        down,
        rewritten,
        content_changed,
        in_place: r.in_place,
    }
}

async fn run() {
    let n = if quick() { 500 } else { 5000 };
    println!("# metadata-only changes — {}", machine());
    println!("tree: {n} generated source files (1-9 KB), 8 KiB average chunks\n");
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = BenchServer::start(&tmp.path().join("store"), ChunkParams::LBFS).await;
    let proxy = CountingProxy::start(server.addr).await.expect("proxy");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&b).expect("mkdir");
    let files = source_tree(&a, n, 11);
    sync(&a, &proxy.url, "a", "tree").await;
    sync(&b, &proxy.url, "b", "tree").await;
    let mut rows = Vec::new();

    // `touch` on every file: the same bytes, a new mtime each.
    for p in &files {
        set_mtime(p, SystemTime::now());
    }
    rows.push(measure("touch every file", (&a, &b), &files, &proxy, 0).await);

    // A release unpacked over the old one: every file written again with its archived mtime,
    // ~2% of them with other bytes.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let release = UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let mut changed = 0;
    for (i, p) in files.iter().enumerate() {
        let mut text = std::fs::read(p).expect("read");
        if rng.random_ratio(1, 50) {
            let at = rng.random_range(0..text.len());
            text.splice(
                at..at,
                b"    // fixed in the patch release\n".iter().copied(),
            );
            changed += 1;
        }
        std::fs::write(p, &text).expect("write");
        set_mtime(p, release + Duration::from_secs(i as u64 * 7));
    }
    rows.push(measure("release unpacked over", (&a, &b), &files, &proxy, changed).await);
    server.stop().await;

    let per_file = |bytes: u64, files: usize| format!("{:.1}", bytes as f64 / files as f64);
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|m| {
            let up = m.up.0 + m.up.1;
            let down = m.down.0 + m.down.1;
            vec![
                m.what.to_owned(),
                m.files.to_string(),
                format!("{} / {}", m.up.0, m.up.1),
                format!("{} / {}", m.down.0, m.down.1),
                per_file(up, m.files),
                per_file(down, m.files),
                (up + down).to_string(),
                format!("{} of {}", m.rewritten, m.content_changed),
                m.in_place.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "change",
                "files",
                "uploader sent / received (B)",
                "receiver sent / received (B)",
                "uploader B/file",
                "receiver B/file",
                "total both ways (B)",
                "receiver rewrote (of changed)",
                "applied in place",
            ],
            &table_rows
        )
    );
    for m in &rows {
        assert_eq!(
            m.rewritten, m.content_changed,
            "{}: the receiver rewrote files whose bytes did not change",
            m.what
        );
    }
}
