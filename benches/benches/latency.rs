//! Real-time latency: from writing a small file in one watched folder to it appearing in another
//! client's watched folder, through the server on loopback. Target: median under 200 ms.

#![allow(clippy::print_stdout, missing_docs)]

use std::time::{Duration, Instant};

use lbsync_benches::{BenchServer, machine, quick, runtime, table};
use lbsync_chunkstore::ChunkParams;

fn main() {
    runtime().block_on(run());
}

async fn run() {
    let samples = if quick() { 10 } else { 50 };
    println!("# latency — {}", machine());
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = BenchServer::start(&tmp.path().join("store"), ChunkParams::DEFAULT).await;
    let url = format!("http://{}", server.addr);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut stops = Vec::new();
    for (dir, dev) in [(&a, "A"), (&b, "B")] {
        std::fs::create_dir_all(dir).expect("mkdir");
        let opts = lbsync_client::SyncOptions {
            server: Some(url.clone()),
            device: Some(dev.into()),
            ..Default::default()
        };
        let wopts = lbsync_client::WatchOptions {
            debounce: Duration::from_millis(50),
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let dir = dir.clone();
        stops.push((
            tx,
            tokio::spawn(async move {
                lbsync_client::watch(&dir, &opts, &wopts, async {
                    let _ = rx.await;
                })
                .await
            }),
        ));
    }
    // Let both watchers finish their first sync.
    let warm = a.join("warm-up.txt");
    std::fs::write(&warm, "warm").expect("write");
    wait_for(&b.join("warm-up.txt"), "warm").await;

    let mut ms = Vec::with_capacity(samples);
    for i in 0..samples {
        let body = format!("sample {i}");
        let start = Instant::now();
        std::fs::write(a.join(format!("note-{i}.txt")), &body).expect("write");
        wait_for(&b.join(format!("note-{i}.txt")), &body).await;
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let p95 = ms[(ms.len() * 95 / 100).min(ms.len() - 1)];
    println!(
        "{}",
        table(
            &[
                "small file A → server → B",
                "samples",
                "median",
                "p95",
                "min",
                "max"
            ],
            &[vec![
                "watch, debounce 50 ms".into(),
                samples.to_string(),
                format!("{median:.0} ms"),
                format!("{p95:.0} ms"),
                format!("{:.0} ms", ms[0]),
                format!("{:.0} ms", ms[ms.len() - 1]),
            ]]
        )
    );
    for (tx, h) in stops {
        let _ = tx.send(());
        let _ = h.await;
    }
    server.stop().await;
}

async fn wait_for(path: &std::path::Path, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(path).ok().as_deref() != Some(body) {
        assert!(
            Instant::now() < deadline,
            "{} never arrived",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
