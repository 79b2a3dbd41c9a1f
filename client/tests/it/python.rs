//! An outside client: clients/python/lbsync_py.py, written from sync.proto and docs/PROTOCOL.md
//! alone, interoperates with the real server and the real `lbsync-client` both ways, and its own
//! FastCDC implementation reproduces the doc's vectors. Skipped (saying why) where python3 or its
//! PyPI packages are missing, except in CI, where that fails.

#![allow(clippy::unwrap_used)] // a failure is a test failure

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::util::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../clients/python/lbsync_py.py"
);

/// Whether python3 with the client's requirements is here; outside CI a missing one skips.
fn python_ready() -> bool {
    let check = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, blake3, zstandard"])
        .output();
    let why = match check {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "python3 lacks the client's packages ({}): python3 -m pip install -r \
             clients/python/requirements.txt",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("no python3 on PATH: {e}"),
    };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("skipped: {why}");
    false
}

fn python(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(SCRIPT).args(args).stdin(Stdio::null());
    c
}

async fn run_python(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python(&args).output().unwrap()
    })
    .await
    .unwrap()
}

#[test]
fn the_python_client_reproduces_the_docs_vectors() {
    if !python_ready() {
        return;
    }
    let out = python(&["check-vectors"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("vectors: ok"), "{}", text(&out));
}

/// Text that compresses (so downloads arrive as zstd) between stretches of noise.
fn mixed(seed: u64) -> Vec<u8> {
    let mut data = seeded(200 << 10, seed);
    for i in 0..4000 {
        data.extend_from_slice(format!("line {i}: lbsync keeps folders in sync\n").as_bytes());
    }
    data.extend_from_slice(&seeded(100 << 10, seed + 1));
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_and_lbsync_client_sync_each_others_files() {
    if !python_ready() {
        return;
    }
    let server = Server::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synced");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let url = server.url.clone();
    let common = |rest: &[&str]| {
        let mut v = args(&[
            "--server", &url, "--folder", "default", "--device", "python",
        ]);
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    };

    // Python uploads and commits; lbsync-client downloads it byte for byte.
    let up = tmp.path().join("up.bin");
    let data = mixed(7);
    std::fs::write(&up, &data).unwrap();
    let out = run_python(common(&["upload", up.to_str().unwrap(), "py/data.bin"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("committed py/data.bin v1"),
        "{}",
        text(&out)
    );
    let out = run(args(&["sync", d, "--server", &url, "--device", "rust"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(dir.join("py/data.bin")).unwrap(), data);

    // A second version from Python is based on the first.
    let data2 = [&data[..], b"appended by python\n"].concat();
    std::fs::write(&up, &data2).unwrap();
    let out = run_python(common(&["upload", up.to_str().unwrap(), "py/data.bin"])).await;
    assert!(
        text(&out).contains("committed py/data.bin v2"),
        "{}",
        text(&out)
    );
    let out = run(args(&["sync", d])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(dir.join("py/data.bin")).unwrap(), data2);

    // Python follows Changes; lbsync-client uploads a new file; Python downloads it.
    let got = tmp.path().join("got.bin");
    let wait_args = common(&["wait-for", "rust/new.bin", got.to_str().unwrap()]);
    let waiter = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = wait_args.iter().map(String::as_str).collect();
        python(&args).output().unwrap()
    });
    let new = mixed(11);
    write(Path::new(d), "rust/new.bin", &new);
    let out = run(args(&["sync", d])).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = waiter.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&got).unwrap(), new);

    // And a plain download of the other client's file.
    let got2 = tmp.path().join("got2.bin");
    let out = run_python(common(&[
        "download",
        "rust/new.bin",
        got2.to_str().unwrap(),
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&got2).unwrap(), new);
    server.stop().await;
}
