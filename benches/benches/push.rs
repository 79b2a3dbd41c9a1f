//! End-to-end push of a new file through the real server in a separate process on loopback:
//! client chunking and hashing, gRPC, the server's re-hashing, packs, fsync and the commit.
//! Target: ≥ 400 MiB/s with both processes under 150 MB RSS.

#![allow(clippy::print_stdout, missing_docs)]

use std::io::Write;
use std::time::Instant;

use lbsync_benches::{ChildServer, cpu_seconds, machine, peak_rss, quick, runtime, table};
use rand::{RngCore, SeedableRng};

fn main() {
    if ChildServer::serve_if_child() {
        return;
    }
    runtime().block_on(run());
}

async fn run() {
    let size: u64 = if quick() { 64 << 20 } else { 1 << 30 };
    println!("# end-to-end push — {}", machine());
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    // The same new file into a plain folder and into an end-to-end encrypted one, in one run.
    for encrypted in [false, true] {
        let (row, rate) = push(tmp.path(), size, encrypted).await;
        rows.push(row);
        rates.push(rate);
    }
    println!(
        "{}",
        table(
            &[
                "push of a new file",
                "folder",
                "size",
                "time",
                "rate",
                "client peak RSS",
                "server peak RSS",
                "CPU client + server",
            ],
            &rows
        )
    );
    println!(
        "encrypted / plain throughput: {:.0}% (target >= 80%)",
        rates[1] / rates[0] * 100.0
    );
}

/// Pushes a new file of `size` random bytes into a new folder; returns the table row and MiB/s.
async fn push(tmp: &std::path::Path, size: u64, encrypted: bool) -> (Vec<String>, f64) {
    let name = if encrypted { "encrypted" } else { "plain" };
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    // Written in 4 MiB pieces so that the client's own memory stays small.
    {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.join("new.bin")).expect("create"));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut buf = vec![0u8; 4 << 20];
        for _ in 0..size / buf.len() as u64 {
            rng.fill_bytes(&mut buf);
            f.write_all(&buf).expect("write");
        }
    }
    let server = ChildServer::start(&tmp.join(format!("store-{name}")));
    if encrypted {
        let pass = tmp.join("passphrase");
        std::fs::write(&pass, "bench passphrase\n").expect("passphrase file");
        let opts = lbsync_client::SyncOptions {
            server: Some(server.url()),
            folder: Some(name.to_owned()),
            device: Some("pusher".into()),
            ..Default::default()
        };
        let how = lbsync_client::keys::InitOptions {
            encrypt: true,
            passphrase: lbsync_client::keys::Passphrase { file: Some(pass) },
            identity: None,
        };
        lbsync_client::keys::init(&dir, &opts, &how)
            .await
            .expect("make the folder encrypted");
    }
    let rss_before = peak_rss();
    let cpu_before = cpu_seconds();
    let start = Instant::now();
    let report = lbsync_benches::sync(&dir, &server.url(), "pusher", name).await;
    let secs = start.elapsed().as_secs_f64();
    let client_cpu = cpu_seconds() - cpu_before;
    let server = server.stop();
    let mib_s = size as f64 / (1 << 20) as f64 / secs;
    let row = vec![
        format!("{} chunks sent", report.chunks_sent),
        name.to_owned(),
        format!("{} MiB", size >> 20),
        format!("{secs:.2} s"),
        format!("{mib_s:.0} MiB/s"),
        format!("{} MB", peak_rss().max(rss_before) / 1_000_000),
        format!("{} MB", server.peak_rss / 1_000_000),
        format!("{client_cpu:.1} + {:.1} s", server.cpu_seconds),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    (row, mib_s)
}
