//! Bytes on the wire for edits, counted at the socket (gRPC and HTTP/2 framing, manifests and
//! handshakes included), for lbsync at three average chunk sizes, naive whole-file upload, and
//! rsync through a local rsync daemon when rsync is installed. Then the dedup table: store size
//! after two versions of a file and of a source tree, against keeping whole files.

#![allow(clippy::print_stdout, missing_docs)]

use lbsync_benches::rsync::Rsync;
use lbsync_benches::{
    BenchServer, CountingProxy, Edit, changed_bytes, machine, patch_release, quick, random_bytes,
    runtime, snapshot, source_tree, sync, table, tree_bytes,
};
use lbsync_chunkstore::{ChunkParams, ChunkStore, PackStore};

fn kb(b: u64) -> String {
    if b < 10_000 {
        format!("{b} B")
    } else {
        format!("{:.1} KB", b as f64 / 1000.0)
    }
}

/// A workload, rsync's (sent, received), and with -z.
type RsyncRow = (String, (u64, u64), (u64, u64));

struct Row {
    workload: String,
    params: &'static str,
    up: (u64, u64),
    down: (u64, u64),
    naive: u64,
}

fn main() {
    runtime().block_on(run());
}

async fn run() {
    let size = if quick() { 8 << 20 } else { 100 << 20 };
    let files = if quick() { 300 } else { 3000 };
    println!("# bandwidth and dedup — {}", machine());
    println!(
        "file: {} MiB of seeded random bytes; tree: {files} generated source files",
        size >> 20
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let rsync = Rsync::start(tmp.path());
    let base = random_bytes(size, 1);
    let mut rows: Vec<Row> = Vec::new();
    let mut rsync_rows: Vec<RsyncRow> = Vec::new();
    let mut dedup: Vec<Vec<String>> = Vec::new();
    for (pname, params) in [
        ("8K", ChunkParams::LBFS),
        ("16K", ChunkParams::AVG_16K),
        ("64K", ChunkParams::AVG_64K),
    ] {
        let store_dir = tmp.path().join(format!("store-{pname}"));
        let server = BenchServer::start(&store_dir, params).await;
        let proxy = CountingProxy::start(server.addr).await.expect("proxy");
        for (i, edit) in Edit::ALL.iter().enumerate() {
            let work = tmp.path().join(format!("{pname}-{i}"));
            let (a, b) = (work.join("a"), work.join("b"));
            std::fs::create_dir_all(&a).expect("mkdir");
            std::fs::create_dir_all(&b).expect("mkdir");
            std::fs::write(a.join("file.bin"), &base).expect("write");
            let folder = format!("w{i}");
            let url = proxy.url.clone();
            sync(&a, &url, "a", &folder).await;
            sync(&b, &url, "b", &folder).await;
            if let Some(r) = rsync.as_ref().filter(|_| pname == "8K") {
                r.push(&a, &format!("w{i}"), false);
            }
            proxy.take();
            let naive = edit.apply(&a, &base);
            sync(&a, &url, "a", &folder).await;
            let up = proxy.take();
            sync(&b, &url, "b", &folder).await;
            let down = proxy.take();
            rows.push(Row {
                workload: edit.name().into(),
                params: pname,
                up,
                down,
                naive,
            });
            if let Some(r) = rsync.as_ref().filter(|_| pname == "8K") {
                // Two mirrors at the base state, one per flag set.
                let plain = r.push(&a, &format!("w{i}"), false);
                let mirror = work.join("mirror");
                std::fs::create_dir_all(&mirror).expect("mkdir");
                std::fs::write(mirror.join("file.bin"), &base).expect("write");
                r.push(&mirror, &format!("z{i}"), false);
                let z = r.push(&a, &format!("z{i}"), true);
                rsync_rows.push((edit.name().into(), plain, z));
            }
            let _ = std::fs::remove_dir_all(&work);
        }

        // The source tree and its patch release.
        let work = tmp.path().join(format!("{pname}-tree"));
        let (a, b) = (work.join("a"), work.join("b"));
        std::fs::create_dir_all(&b).expect("mkdir");
        let paths = source_tree(&a, files, 7);
        let v1_bytes = tree_bytes(&a);
        let url = proxy.url.clone();
        sync(&a, &url, "a", "tree").await;
        sync(&b, &url, "b", "tree").await;
        if let Some(r) = rsync.as_ref().filter(|_| pname == "8K") {
            r.push(&a, "tree", false);
            r.push(&a, "treez", false);
        }
        proxy.take();
        let before = snapshot(&a);
        patch_release(&a, &paths, 8);
        let naive_tree = changed_bytes(&a, &before);
        let v2_bytes = tree_bytes(&a);
        sync(&a, &url, "a", "tree").await;
        let up = proxy.take();
        sync(&b, &url, "b", "tree").await;
        let down = proxy.take();
        rows.push(Row {
            workload: "source tree: patch release".into(),
            params: pname,
            up,
            down,
            naive: naive_tree,
        });
        if let Some(r) = rsync.as_ref().filter(|_| pname == "8K") {
            let plain = r.push(&a, "tree", false);
            let z = r.push(&a, "treez", true);
            rsync_rows.push(("source tree: patch release".into(), plain, z));
        }
        server.stop().await;

        // Dedup: everything this store ingested (the base file and its edits, the tree twice).
        let store = PackStore::open(&store_dir).expect("open store");
        let stats = store.stats().expect("stats");
        let whole = (size as u64) * 9 + (1 << 20) + v1_bytes + v2_bytes;
        dedup.push(vec![
            pname.into(),
            format!("{:.1} MB", whole as f64 / 1e6),
            format!("{:.1} MB", stats.disk_bytes as f64 / 1e6),
            format!("{:.2}×", whole as f64 / stats.disk_bytes as f64),
            format!("{}", stats.chunks),
        ]);
        let _ = std::fs::remove_dir_all(&work);
    }

    let mut table_rows = Vec::new();
    for r in &rows {
        table_rows.push(vec![
            r.workload.clone(),
            r.params.into(),
            kb(r.up.0),
            kb(r.up.1),
            kb(r.up.0 + r.up.1),
            kb(r.down.0 + r.down.1),
            kb(r.naive),
        ]);
    }
    println!(
        "\n## lbsync: bytes on the wire for one edit (uploading client, then the downloading one)\n"
    );
    println!(
        "{}",
        table(
            &[
                "workload",
                "avg chunk",
                "up: sent",
                "up: received",
                "up: total",
                "down: total",
                "naive upload"
            ],
            &table_rows
        )
    );
    println!("## rsync -a --no-whole-file --delete through a local rsync daemon\n");
    if rsync_rows.is_empty() {
        println!("(rsync is not installed: `apt-get install rsync` to fill this column)\n");
    } else {
        let rs: Vec<Vec<String>> = rsync_rows
            .iter()
            .map(|(w, p, z)| {
                vec![
                    w.clone(),
                    kb(p.0),
                    kb(p.1),
                    kb(p.0 + p.1),
                    kb(z.0),
                    kb(z.0 + z.1),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &[
                    "workload", "sent", "received", "total", "-z sent", "-z total"
                ],
                &rs
            )
        );
    }
    println!("## dedup: one store per chunk size, after the file edits and both tree versions\n");
    println!(
        "{}",
        table(
            &[
                "avg chunk",
                "whole files",
                "store on disk",
                "dedup ratio",
                "chunks"
            ],
            &dedup
        )
    );
}
