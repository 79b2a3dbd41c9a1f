//! Encrypted folders beside plain ones, in the same run (issue 19):
//! - push of a new file (1 GiB; 64 MiB quick) through the real server in a separate process:
//!   target ≥ 80% of the plain folder's throughput;
//! - bytes on the wire for the bandwidth bench's edits, counted at the socket: target ≤ 1.2× the
//!   plain folder's, with where the extra goes (an encrypted folder's downloads come as whole
//!   sealed chunks: no chunk delta against the chunks it replaced, no zstd on the wire);
//! - dedup inside one folder (a source tree stored twice, a file made of one block repeated):
//!   distinct chunks and the store's size, target equal.

#![allow(clippy::print_stdout, missing_docs)]

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use lbsync_benches::{
    BenchServer, ChildServer, CountingProxy, Edit, machine, quick, random_bytes, runtime,
    source_tree, sync, table, tree_bytes,
};
use lbsync_chunkstore::{ChunkParams, ChunkStore, PackStore};
use rand::{RngCore, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Encrypted,
}

impl Kind {
    const BOTH: [Kind; 2] = [Kind::Plain, Kind::Encrypted];

    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Encrypted => "encrypted",
        }
    }
}

const PASSPHRASE: &str = "bench passphrase";

/// Sets `dir` up for `folder` on `url`: an encrypted folder is made by its first device
/// (`create`) and joined by the others; a plain folder needs nothing before its first sync.
async fn prepare(kind: Kind, dir: &Path, url: &str, folder: &str, device: &str, create: bool) {
    std::fs::create_dir_all(dir).expect("mkdir");
    if kind == Kind::Plain {
        return;
    }
    lbsync_benches::encrypted_folder(dir, url, folder, device, PASSPHRASE, create).await;
}

fn main() {
    if ChildServer::serve_if_child() {
        return;
    }
    // Passphrase wrapping at a tiny work factor: the bench measures syncs, not the KDF.
    if std::env::var_os("LBSYNC_SCRYPT_LOG_N").is_none() {
        set_fast_kdf();
    }
    println!("# encrypted folders beside plain ones — {}", machine());
    // `cargo bench --bench encrypted -- bandwidth` runs only the sections named.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |section: &str| named.is_empty() || named.iter().any(|n| n == section);
    runtime().block_on(async {
        if run("push") {
            push().await;
        }
        if run("bandwidth") {
            bandwidth().await;
        }
        if run("dedup") {
            dedup().await;
        }
    });
}

/// The fast KDF for the whole process (the bench's own threads are not started yet).
fn set_fast_kdf() {
    // Edition 2024 makes set_var unsafe, and unsafe code is forbidden here: run the bench
    // again as a child with the variable set instead.
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(std::env::args_os().skip(1))
        .env("LBSYNC_SCRYPT_LOG_N", "10")
        .status()
        .expect("re-run the bench");
    std::process::exit(status.code().unwrap_or(1));
}

fn ratio(enc: f64, plain: f64) -> String {
    if plain == 0.0 {
        "-".into()
    } else {
        format!("{:.2}", enc / plain)
    }
}

async fn push() {
    let size: u64 = if quick() { 64 << 20 } else { 1 << 30 };
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(&tmp.path().join("store"));
    let url = server.url();
    // Plain, encrypted, encrypted, plain: each kind runs once early and once late into the
    // growing store, so neither gains from going first.
    let order = [Kind::Plain, Kind::Encrypted, Kind::Encrypted, Kind::Plain];
    let mut rates = [Vec::new(), Vec::new()];
    let mut rows = Vec::new();
    for (i, kind) in order.into_iter().enumerate() {
        let folder = format!("{}-{i}", kind.name());
        let dir = tmp.path().join(&folder);
        prepare(kind, &dir, &url, &folder, "pusher", true).await;
        // Written in 4 MiB pieces so that the bench's own memory stays small.
        {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(dir.join("new.bin")).expect("create"),
            );
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5 + i as u64);
            let mut buf = vec![0u8; 4 << 20];
            for _ in 0..size / buf.len() as u64 {
                rng.fill_bytes(&mut buf);
                f.write_all(&buf).expect("write");
            }
        }
        let start = Instant::now();
        let report = sync(&dir, &url, "pusher", &folder).await;
        let secs = start.elapsed().as_secs_f64();
        let rate = size as f64 / (1 << 20) as f64 / secs;
        rates[usize::from(kind == Kind::Encrypted)].push(rate);
        rows.push(vec![
            kind.name().into(),
            format!("{} MiB", size >> 20),
            format!("{} chunks", report.chunks_sent),
            format!("{secs:.2} s"),
            format!("{rate:.0} MiB/s"),
        ]);
        std::fs::remove_dir_all(&dir).expect("rm");
    }
    server.stop();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (plain, encrypted) = (mean(&rates[0]), mean(&rates[1]));
    rows.push(vec![
        "encrypted / plain".into(),
        String::new(),
        String::new(),
        String::new(),
        format!("{}% (target ≥ 80%)", (encrypted / plain * 100.0).round()),
    ]);
    println!("\n## push of a new file (each kind twice; the ratio of their means)\n");
    println!(
        "{}",
        table(&["folder", "size", "sent", "time", "rate"], &rows)
    );
}

async fn bandwidth() {
    let size = if quick() { 8 << 20 } else { 100 << 20 };
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = random_bytes(size, 1);
    let server = BenchServer::start(&tmp.path().join("store"), ChunkParams::DEFAULT).await;
    let proxy = CountingProxy::start(server.addr).await.expect("proxy");
    let url = proxy.url.clone();
    let mut rows = Vec::new();
    for (i, edit) in Edit::ALL.iter().enumerate() {
        // (up, down) for plain, then encrypted.
        let mut bytes = Vec::new();
        for kind in Kind::BOTH {
            let work = tmp.path().join(format!("{}-{i}", kind.name()));
            let (a, b) = (work.join("a"), work.join("b"));
            // Names of one length: a folder name travels in every request, and its length is
            // not a cost of encryption.
            let folder = format!("{}-{i}", &kind.name()[..5]);
            prepare(kind, &a, &url, &folder, "a", true).await;
            prepare(kind, &b, &url, &folder, "b", false).await;
            std::fs::write(a.join("file.bin"), &base).expect("write");
            sync(&a, &url, "a", &folder).await;
            sync(&b, &url, "b", &folder).await;
            proxy.take();
            edit.apply(&a, &base);
            sync(&a, &url, "a", &folder).await;
            let (s, r) = proxy.take();
            sync(&b, &url, "b", &folder).await;
            let (s2, r2) = proxy.take();
            bytes.push((s + r, s2 + r2));
            let _ = std::fs::remove_dir_all(&work);
        }
        let (p, e) = (bytes[0], bytes[1]);
        let total = |x: (u64, u64)| (x.0 + x.1) as f64;
        let where_ = if e.1 as f64 > p.1 as f64 * 1.2 + 4096.0 {
            format!(
                "download: {} more (whole sealed chunks, no chunk delta)",
                kb(e.1.saturating_sub(p.1))
            )
        } else if e.0 as f64 > p.0 as f64 * 1.2 + 4096.0 {
            format!("upload: {} more", kb(e.0.saturating_sub(p.0)))
        } else {
            "-".into()
        };
        rows.push(vec![
            edit.name().into(),
            kb(p.0),
            kb(p.1),
            kb(e.0),
            kb(e.1),
            format!("{}×", ratio(total(e), total(p))),
            where_,
        ]);
    }
    server.stop().await;
    println!(
        "\n## bytes on the wire for one edit of a {} MiB file (up: the editing client; down: the other)\n",
        size >> 20
    );
    println!(
        "{}",
        table(
            &[
                "edit",
                "plain up",
                "plain down",
                "encrypted up",
                "encrypted down",
                "encrypted / plain (target ≤ 1.2×)",
                "where the extra goes",
            ],
            &rows
        )
    );
}

async fn dedup() {
    let files = if quick() { 300 } else { 3000 };
    let block = if quick() { 1 << 20 } else { 8 << 20 };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    let mut stats = Vec::new();
    for kind in Kind::BOTH {
        let store_dir = tmp.path().join(format!("store-{}", kind.name()));
        let server = BenchServer::start(&store_dir, ChunkParams::DEFAULT).await;
        let url = format!("http://{}", server.addr);
        let dir = tmp.path().join(kind.name());
        prepare(kind, &dir, &url, "dedup", "a", true).await;
        // The same tree under two names, and one block four times over in one file.
        source_tree(&dir.join("one"), files, 7);
        source_tree(&dir.join("two"), files, 7);
        std::fs::write(dir.join("repeat.bin"), random_bytes(block, 3).repeat(4)).expect("write");
        let logical = tree_bytes(&dir);
        sync(&dir, &url, "a", "dedup").await;
        server.stop().await;
        let s = PackStore::open(&store_dir)
            .expect("open store")
            .stats()
            .expect("stats");
        rows.push(vec![
            kind.name().into(),
            format!("{:.1} MB", logical as f64 / 1e6),
            format!("{}", s.chunks),
            format!("{:.1} MB", s.raw_bytes as f64 / 1e6),
            format!("{:.1} MB", s.disk_bytes as f64 / 1e6),
            format!("{:.2}×", s.dedup_ratio(logical)),
        ]);
        stats.push((s.chunks, s.disk_bytes, s.dedup_ratio(logical)));
    }
    // Dedup is which chunks are stored once: the same distinct chunks in both folders is equal
    // dedup. The store's size differs for another reason, compression: a plain chunk is
    // compressed whole, a sealed one block by block (512 bytes of context each).
    rows.push(vec![
        "encrypted / plain".into(),
        String::new(),
        format!(
            "{} (target 1.00)",
            ratio(stats[1].0 as f64, stats[0].0 as f64)
        ),
        String::new(),
        ratio(stats[1].1 as f64, stats[0].1 as f64),
        ratio(stats[1].2, stats[0].2),
    ]);
    println!(
        "\n## dedup inside one folder: a {files}-file source tree stored twice, and a file of one {} MiB block repeated 4 times\n",
        block >> 20
    );
    println!(
        "{}",
        table(
            &[
                "folder",
                "files' bytes",
                "distinct chunks",
                "chunk bytes",
                "store on disk",
                "files' bytes / store"
            ],
            &rows
        )
    );
    println!(
        "(equal distinct chunks is equal dedup; the store's size also holds compression, which \
         a sealed chunk gets block by block)"
    );
}

fn kb(b: u64) -> String {
    if b < 10_000 {
        format!("{b} B")
    } else {
        format!("{:.1} KB", b as f64 / 1000.0)
    }
}
