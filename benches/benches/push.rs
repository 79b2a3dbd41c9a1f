//! End-to-end push of a new file through the real server in a separate process on loopback:
//! client chunking and hashing, gRPC, the server's re-hashing, packs, fsync and the commit.
//! Target: ≥ 400 MiB/s with both processes under 150 MB RSS.

#![allow(clippy::print_stdout, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use lbsync_benches::{machine, peak_rss, quick, runtime, table};
use rand::{RngCore, SeedableRng};

const SERVE_VAR: &str = "LBSYNC_BENCH_SERVE_STORE";

fn main() {
    let rt = runtime();
    if let Ok(store) = std::env::var(SERVE_VAR) {
        rt.block_on(serve(&store));
        return;
    }
    rt.block_on(run());
}

/// The server process: serves until its stdin closes, then prints its peak RSS.
async fn serve(store: &str) {
    let store = lbsync_chunkstore::PackStore::open(store).expect("open store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("{}", listener.local_addr().expect("addr"));
    std::io::stdout().flush().expect("flush");
    let shutdown = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    };
    lbsync_server::run(listener, store, Default::default(), shutdown)
        .await
        .expect("serve");
    println!("{}", peak_rss());
}

async fn run() {
    let size: u64 = if quick() { 64 << 20 } else { 1 << 30 };
    println!("# end-to-end push — {}", machine());
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("client");
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
    let mut server = Command::new(std::env::current_exe().expect("exe"))
        .env(SERVE_VAR, tmp.path().join("store"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let addr = lines.next().expect("address").expect("address");
    let rss_before = peak_rss();
    let start = Instant::now();
    let report = lbsync_benches::sync(&dir, &format!("http://{addr}"), "pusher", "default").await;
    let secs = start.elapsed().as_secs_f64();
    drop(server.stdin.take());
    let server_rss: u64 = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let _ = server.wait();
    let mib_s = size as f64 / (1 << 20) as f64 / secs;
    println!(
        "{}",
        table(
            &[
                "push of a new file",
                "size",
                "time",
                "rate",
                "client peak RSS",
                "server peak RSS"
            ],
            &[vec![
                format!("{} chunks sent", report.chunks_sent),
                format!("{} MiB", size >> 20),
                format!("{secs:.2} s"),
                format!("{mib_s:.0} MiB/s"),
                format!("{} MB", peak_rss().max(rss_before) / 1_000_000),
                format!("{} MB", server_rss / 1_000_000),
            ]]
        )
    );
}
