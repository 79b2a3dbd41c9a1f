//! A very large file both ways: `sync` pushes it from one folder and pulls it into another, each
//! in a process of its own, and reports their peak RSS. The file is a 256 MiB random block
//! repeated, so the server stores it once while the client still chunks, hashes and lists every
//! byte. `LBSYNC_BENCH_BIGFILE_UNIQUE=1` makes every block different instead (the server then
//! stores it all). Target (issue: client sync engine): under 100 MB RSS for a 10 GB file.

#![allow(clippy::print_stdout, missing_docs)]

use std::io::{Read, Write};

use lbsync_benches::{ChildServer, ChildSync, machine, quick, table};
use rand::{RngCore, SeedableRng};

const BLOCK: usize = 256 << 20;

fn main() {
    if ChildServer::serve_if_child() || ChildSync::sync_if_child() {
        return;
    }
    let size: u64 = if quick() { 256 << 20 } else { 10 << 30 };
    let unique = std::env::var_os("LBSYNC_BENCH_BIGFILE_UNIQUE").is_some();
    println!(
        "# a {} GiB file ({}) both ways — {}",
        size as f64 / (1u64 << 30) as f64,
        if unique {
            "random"
        } else {
            "a 256 MiB random block repeated"
        },
        machine()
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    {
        let mut block = vec![0u8; BLOCK];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
        rng.fill_bytes(&mut block);
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(a.join("big.bin")).expect("create"));
        let mut left = size;
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            if unique {
                rng.fill_bytes(&mut block);
            }
            f.write_all(&block[..n]).expect("write");
            left -= n as u64;
        }
        f.flush().expect("flush");
    }
    let server = ChildServer::start(&tmp.path().join("store"));
    let push = ChildSync::run(&a, &server.url(), "pusher");
    let pull = ChildSync::run(&b, &server.url(), "puller");
    let server_rss = server.stop().peak_rss;
    assert_eq!(
        hash(&a.join("big.bin")),
        hash(&b.join("big.bin")),
        "the pulled file differs"
    );
    let row = |direction: &str, s: ChildSync| {
        vec![
            direction.to_owned(),
            format!("{:.1} s", s.seconds),
            format!("{:.0} MiB/s", size as f64 / (1 << 20) as f64 / s.seconds),
            format!("{} MB", s.peak_rss / 1_000_000),
            s.report,
        ]
    };
    println!(
        "{}",
        table(
            &[
                "direction",
                "time",
                "rate",
                "client peak RSS",
                "what the sync said"
            ],
            &[row("push", push), row("pull", pull)]
        )
    );
    println!("server peak RSS {} MB", server_rss / 1_000_000);
}

fn hash(path: &std::path::Path) -> blake3::Hash {
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return h.finalize();
        }
        h.update(&buf[..n]);
    }
}
