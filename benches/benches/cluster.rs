//! Several servers on one shared store (issue 18): packs on S3 (Garage), metadata and the chunk
//! index in PostgreSQL, measured against the embedded local store in the same run.
//!
//! 1. Push of a new 1 GiB random file (64 MiB in quick mode) by the sync engine into a server
//!    (in its own process) on each store, then a pull of it by a second device: MiB/s and the
//!    ratio shared / local. A pull still running after 60 s (5 s in quick mode) is stopped and
//!    rated by the bytes the server sent it until then.
//! 2. MissingChunks: one or four clients asking for batches of 1,000 and 10,000 ids, half of
//!    them present, through the real RPC on each store; and `PgChunkIndex::lookup` alone, the
//!    one SQL statement under the shared store's answer. Ids per second.
//! 3. Commits: 50 clients, each uploading and committing new small files (MissingChunks,
//!    PutChunks, Commit, as the engine does) for a fixed time, each in its own folder or all in
//!    one folder: through one server on the local store, one on the shared store, and two on
//!    the same shared store (clients split between them). Commits/s and latencies.
//!
//! The shared rows need the dev cluster (`eval "$(scripts/dev-cluster start DIR)"`, which sets
//! `LBSYNC_TEST_STORE`, `LBSYNC_TEST_METADATA` and the AWS credentials); without it they are
//! skipped with a line that says so, and the local rows still run. Each section gets a fresh
//! S3 prefix (its objects deleted at the end) and a fresh database (dropped at the end).

#![allow(clippy::print_stdout, missing_docs)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lbsync_benches::{
    ChildServer, CountingProxy, Usage, machine, quick, random_bytes, runtime, table,
};
use lbsync_chunkstore::{ChunkId, ChunkParams, Chunker, Manifest};
use lbsync_client::remote::{Committed, Remote};
use lbsync_proto::{CommitOutcome, CommitRequest, Content, Entry, SyncPath, pb};
use lbsync_testsupport::services;
use rand::{Rng, RngCore, SeedableRng};

/// Clients of the commit section.
const CLIENTS: usize = 50;

fn main() {
    if ChildServer::serve_if_child() {
        return;
    }
    runtime().block_on(run());
}

/// A fresh S3 prefix and a fresh database, gone (objects deleted, database dropped) after use.
struct Shared {
    s3: services::S3Service,
    pg: services::PgService,
}

impl Shared {
    /// `None` when the cluster's variables are unset. Checked here rather than left to
    /// `services`, which panics under `CI=true` when they are missing: a bench skips.
    fn new(section: &str) -> Option<Self> {
        if !cluster_configured() {
            return None;
        }
        Some(Self {
            s3: services::s3(section)?,
            pg: services::postgres(section)?,
        })
    }

    fn server(&self) -> ChildServer {
        ChildServer::start_shared(&self.s3.url, &self.pg.url)
    }

    /// Deletes the objects under the prefix (the database goes when `pg` drops).
    async fn remove(self) {
        use futures::{StreamExt, TryStreamExt};
        use object_store::ObjectStore as _;
        let (store, prefix) =
            lbsync_objstore::object_store_from_url(&self.s3.url).expect("open the S3 store");
        // `services::s3` gave the prefix a random last component: never the whole bucket.
        assert!(
            prefix.as_ref().contains("t-"),
            "not a bench prefix: {prefix}"
        );
        // Garage may list a just-deleted object for a moment (more so while a node that
        // was stopped catches up), so deleting goes round until the listing is empty.
        // What is left after that is under a random prefix: worth a warning, not a
        // failed bench.
        let mut deleted = 0;
        for round in 0..10 {
            if round > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            let locations = store
                .list(Some(&prefix))
                .map_ok(|meta| meta.location)
                .boxed();
            deleted += store
                .delete_stream(locations)
                .try_collect::<Vec<_>>()
                .await
                .map_or(0, |d| d.len());
            let left = store.list(Some(&prefix)).try_collect::<Vec<_>>().await;
            if left.as_ref().is_ok_and(Vec::is_empty) {
                return;
            }
        }
        eprintln!("warning: objects still listed under {prefix} after deleting {deleted}");
    }
}

fn cluster_configured() -> bool {
    [services::STORE_VAR, services::METADATA_VAR]
        .iter()
        .all(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

async fn run() {
    println!("# several servers on one shared store — {}", machine());
    if cluster_configured() {
        println!(
            "shared store: S3 {} with PostgreSQL metadata",
            redact_query(&std::env::var(services::STORE_VAR).unwrap_or_default())
        );
    } else {
        println!(
            "the shared-store rows are SKIPPED: {} and {} are unset. Run them against the dev \
             cluster with `eval \"$(scripts/dev-cluster start DIR)\"; unset LBSYNC_STORE \
             LBSYNC_METADATA` first; the local-store rows run without it.",
            services::STORE_VAR,
            services::METADATA_VAR
        );
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    push_pull(tmp.path()).await;
    lookups(tmp.path()).await;
    commits(tmp.path()).await;
}

/// `s3://bucket/prefix` of an `s3://bucket/prefix?options` URL.
fn redact_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

// ---- 1. push and pull -----------------------------------------------------------------------

async fn push_pull(tmp: &Path) {
    let size: u64 = if quick() { 64 << 20 } else { 1 << 30 };
    println!("\n## push and pull of a new {} MiB random file", size >> 20);
    let source = tmp.join("source.bin");
    {
        // Written in 4 MiB pieces so that the bench's own memory stays small.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&source).expect("create"));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
        let mut buf = vec![0u8; 4 << 20];
        for _ in 0..size / buf.len() as u64 {
            rng.fill_bytes(&mut buf);
            f.write_all(&buf).expect("write");
        }
    }
    let want = hash_file(&source);
    let mut rows = Vec::new();
    let local = {
        let server = ChildServer::start(&tmp.join("store-push"));
        let r = push_pull_one(tmp, "local", &server, &source, size, want).await;
        r.finish(server.stop(), &mut rows)
    };
    let shared = match Shared::new("bench_cluster_push") {
        Some(shared) => {
            let server = shared.server();
            let r = push_pull_one(tmp, "shared", &server, &source, size, want).await;
            let rates = r.finish(server.stop(), &mut rows);
            shared.remove().await;
            Some(rates)
        }
        None => None,
    };
    let _ = std::fs::remove_file(&source);
    println!(
        "{}",
        table(
            &[
                "store",
                "push",
                "push rate",
                "pull",
                "pull rate",
                "server CPU",
                "server peak RSS",
            ],
            &rows
        )
    );
    match shared {
        Some(s) => println!(
            "shared / local: push {:.0}%, pull {:.1}% (a pull stopped at its deadline is rated \
             by the bytes the server sent until then)",
            s.0 / local.0 * 100.0,
            s.1 / local.1 * 100.0
        ),
        None => println!("shared store: skipped (no cluster)"),
    }
}

fn hash_file(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(p).expect("open the file"))
        .expect("hash the file");
    h.finalize()
}

struct PushPull {
    name: &'static str,
    size: u64,
    push_secs: f64,
    pull_secs: f64,
    /// Bytes the server sent the puller (gRPC framing included).
    pulled: u64,
    /// Whether the pull ended before the deadline.
    pull_done: bool,
}

impl PushPull {
    /// Adds the row; returns (push, pull) MiB/s.
    fn finish(self, usage: Usage, rows: &mut Vec<Vec<String>>) -> (f64, f64) {
        let push = mib_s(self.size, self.push_secs);
        let (pull, pull_cell) = if self.pull_done {
            let rate = mib_s(self.size, self.pull_secs);
            (rate, format!("{:.2} s", self.pull_secs))
        } else {
            let rate = mib_s(self.pulled, self.pull_secs);
            (
                rate,
                format!(
                    "stopped at {:.0} s, {:.1} of {} MiB",
                    self.pull_secs,
                    self.pulled as f64 / (1 << 20) as f64,
                    self.size >> 20
                ),
            )
        };
        rows.push(vec![
            self.name.to_owned(),
            format!("{:.2} s", self.push_secs),
            format!("{push:.0} MiB/s"),
            pull_cell,
            if pull < 10.0 {
                format!("{pull:.2} MiB/s")
            } else {
                format!("{pull:.0} MiB/s")
            },
            format!("{:.1} s", usage.cpu_seconds),
            format!("{} MB", usage.peak_rss / 1_000_000),
        ]);
        (push, pull)
    }
}

/// Pushes `source` from one device's folder and pulls it into another's, through a proxy that
/// counts what the server sends; checks the copy. A pull still running at `deadline` is
/// stopped, and its rate is what crossed the proxy meanwhile.
async fn push_pull_one(
    tmp: &Path,
    name: &'static str,
    server: &ChildServer,
    source: &Path,
    size: u64,
    want: blake3::Hash,
) -> PushPull {
    let deadline = Duration::from_secs(if quick() { 5 } else { 60 });
    let (up, down) = (
        tmp.join(format!("{name}-up")),
        tmp.join(format!("{name}-down")),
    );
    std::fs::create_dir_all(&up).expect("mkdir");
    std::fs::create_dir_all(&down).expect("mkdir");
    let file = up.join("new.bin");
    if std::fs::hard_link(source, &file).is_err() {
        std::fs::copy(source, &file).expect("copy the source file");
    }
    let url = server.url();
    let t0 = Instant::now();
    lbsync_benches::sync(&up, &url, "pusher", "bench").await;
    let push_secs = t0.elapsed().as_secs_f64();
    let proxy = CountingProxy::start(server.addr).await.expect("proxy");
    let t0 = Instant::now();
    let pull = lbsync_benches::sync(&down, &proxy.url, "puller", "bench");
    let pull_done = tokio::time::timeout(deadline, pull).await.is_ok();
    let pull_secs = t0.elapsed().as_secs_f64();
    let (_, pulled) = proxy.take();
    if pull_done {
        assert_eq!(
            hash_file(&down.join("new.bin")),
            want,
            "{name}: the pulled copy differs"
        );
    }
    let _ = std::fs::remove_dir_all(&up);
    let _ = std::fs::remove_dir_all(&down);
    PushPull {
        name,
        size,
        push_secs,
        pull_secs,
        pulled,
        pull_done,
    }
}

// ---- 2. MissingChunks ------------------------------------------------------------------------

/// Batch sizes asked for.
const BATCHES: [usize; 2] = [1_000, 10_000];

/// Ids for the lookups: `present` ones the server holds, and a pool of absent ones.
struct Ids {
    present: Vec<ChunkId>,
    absent: Vec<ChunkId>,
}

impl Ids {
    fn new() -> Self {
        let n = BATCHES[BATCHES.len() - 1];
        let present = (0..n as u64)
            .map(|i| ChunkId::of(&random_bytes(1024, 1_000_000 + i)))
            .collect();
        let absent = (0..4 * n as u64)
            .map(|i| ChunkId::of(format!("absent {i}").as_bytes()))
            .collect();
        Self { present, absent }
    }

    /// Request `k` of `batch` ids: half present, half absent, interleaved; different absent ids
    /// from one request to the next.
    fn request(&self, batch: usize, k: usize) -> Vec<ChunkId> {
        let half = batch / 2;
        let p = (k * half) % (self.present.len() - half + 1);
        let a = (k * half) % (self.absent.len() - half + 1);
        self.present[p..p + half]
            .iter()
            .zip(&self.absent[a..a + half])
            .flat_map(|(p, a)| [*p, *a])
            .collect()
    }
}

/// Uploads the present ids' chunks into folder `bench`.
async fn upload_present(url: &str) {
    let r = Remote::connect(url, None, "bench", "lookups")
        .await
        .expect("connect");
    let (tx, handle) = r.put_chunks();
    let mut msg = pb::PutChunksRequest::default();
    for i in 0..BATCHES[BATCHES.len() - 1] as u64 {
        let data = bytes::Bytes::from(random_bytes(1024, 1_000_000 + i));
        msg.chunks
            .push(lbsync_proto::wire::encode_chunk(ChunkId::of(&data), &data));
        if msg.chunks.len() >= 512 {
            tx.send(std::mem::take(&mut msg)).await.expect("send");
        }
    }
    if !msg.chunks.is_empty() {
        tx.send(msg).await.expect("send");
    }
    drop(tx);
    handle.await.expect("join").expect("put chunks");
}

async fn lookups(tmp: &Path) {
    let secs = if quick() { 0.3 } else { 4.0 };
    println!("\n## MissingChunks lookups, half of the ids present ({secs} s a row)");
    let ids = Arc::new(Ids::new());
    let mut rows = Vec::new();
    {
        let server = ChildServer::start(&tmp.join("store-lookups"));
        upload_present(&server.url()).await;
        lookup_rows("local", &server.url(), &ids, secs, &mut rows).await;
        server.stop();
    }
    if let Some(shared) = Shared::new("bench_cluster_lookups") {
        let server = shared.server();
        upload_present(&server.url()).await;
        lookup_rows("shared", &server.url(), &ids, secs, &mut rows).await;
        server.stop();
        // The statement alone, on the same database, from this process.
        let index = {
            let url = shared.pg.url.clone();
            tokio::task::spawn_blocking(move || {
                lbsync_server::pg::PgMeta::connect(&url)
                    .expect("connect to the metadata")
                    .chunk_index()
            })
            .await
            .expect("join")
        };
        for batch in BATCHES {
            let (index, ids) = (index.clone(), ids.clone());
            let (requests, elapsed, mut lat) = tokio::task::spawn_blocking(move || {
                let mut lat = Vec::new();
                let start = Instant::now();
                while start.elapsed().as_secs_f64() < secs {
                    let req = ids.request(batch, lat.len());
                    let t0 = Instant::now();
                    let found = index.lookup(&req).expect("lookup");
                    lat.push(t0.elapsed());
                    let n = found.iter().filter(|l| l.is_some()).count();
                    assert_eq!(n, batch / 2, "present ids found");
                }
                (lat.len(), start.elapsed().as_secs_f64(), lat)
            })
            .await
            .expect("join");
            rows.push(lookup_row(
                "PgChunkIndex::lookup (no RPC)",
                batch,
                1,
                requests,
                elapsed,
                &mut lat,
            ));
        }
        // Its pool closed before the database is dropped (off the async threads: blocking).
        tokio::task::spawn_blocking(move || drop(index))
            .await
            .expect("join");
        shared.remove().await;
    } else {
        println!("shared store: skipped (no cluster)");
    }
    println!(
        "{}",
        table(
            &[
                "store",
                "ids a request",
                "clients",
                "requests",
                "requests/s",
                "ids/s",
                "p50",
                "p99",
            ],
            &rows
        )
    );
}

/// Rows of one store: each batch size, by one client and by four at once.
async fn lookup_rows(
    name: &str,
    url: &str,
    ids: &Arc<Ids>,
    secs: f64,
    rows: &mut Vec<Vec<String>>,
) {
    for batch in BATCHES {
        for clients in [1, 4] {
            let mut remotes = Vec::new();
            for c in 0..clients {
                remotes.push(
                    Remote::connect(url, None, "bench", &format!("lookups{c}"))
                        .await
                        .expect("connect"),
                );
            }
            let start = Instant::now();
            let tasks: Vec<_> = remotes
                .into_iter()
                .enumerate()
                .map(|(c, mut r)| {
                    let ids = ids.clone();
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        while start.elapsed().as_secs_f64() < secs {
                            let req = ids.request(batch, lat.len() * clients + c);
                            let t0 = Instant::now();
                            let missing = r.missing(&req).await.expect("MissingChunks");
                            lat.push(t0.elapsed());
                            assert_eq!(missing.len(), batch - batch / 2, "absent ids missing");
                        }
                        lat
                    })
                })
                .collect();
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.expect("client task"));
            }
            let elapsed = start.elapsed().as_secs_f64();
            let requests = lat.len();
            rows.push(lookup_row(
                name, batch, clients, requests, elapsed, &mut lat,
            ));
        }
    }
}

fn lookup_row(
    name: &str,
    batch: usize,
    clients: usize,
    requests: usize,
    elapsed: f64,
    lat: &mut [Duration],
) -> Vec<String> {
    vec![
        name.to_owned(),
        format!("{batch}"),
        format!("{clients}"),
        format!("{requests}"),
        format!("{:.0}", requests as f64 / elapsed),
        format!("{:.0}", (requests * batch) as f64 / elapsed),
        percentile(lat, 0.5),
        percentile(lat, 0.99),
    ]
}

/// The `p` quantile of `lat` (sorted here), in ms.
fn percentile(lat: &mut [Duration], p: f64) -> String {
    lat.sort();
    match lat.len() {
        0 => "-".into(),
        n => {
            let d = lat[((n as f64 * p) as usize).min(n - 1)];
            let ms = d.as_secs_f64() * 1e3;
            if ms < 10.0 {
                format!("{ms:.1} ms")
            } else {
                format!("{ms:.0} ms")
            }
        }
    }
}

// ---- 3. commits ------------------------------------------------------------------------------

/// Where the commit section's clients write.
#[derive(Clone, Copy, PartialEq)]
enum Folders {
    /// Client i in folder `c{i}`.
    Own,
    /// Every client in folder `all`, under `c{i}/`.
    One,
}

#[derive(Default)]
struct Tally {
    commits: u64,
    commit_rpc: Vec<Duration>,
    whole: Vec<Duration>,
    errors: Vec<String>,
}

async fn commits(tmp: &Path) {
    let secs = if quick() { 1.5 } else { 15.0 };
    println!(
        "\n## commits: {CLIENTS} clients committing new small files for {secs} s (MissingChunks, \
         PutChunks, Commit each)"
    );
    let mut rows = Vec::new();
    for folders in [Folders::Own, Folders::One] {
        let server = ChildServer::start(&tmp.join(format!("store-commits-{}", folders as u8)));
        let urls = [server.url()];
        let row = commit_row("local, 1 server", &urls, folders, secs).await;
        let usage = server.stop();
        rows.push(with_cpu(row, &[usage]));
    }
    if let Some(shared) = Shared::new("bench_cluster_commits") {
        for servers in [1, 2] {
            for folders in [Folders::Own, Folders::One] {
                let procs: Vec<_> = (0..servers).map(|_| shared.server()).collect();
                let urls: Vec<_> = procs.iter().map(ChildServer::url).collect();
                let name = if servers == 1 {
                    "shared, 1 server"
                } else {
                    "shared, 2 servers"
                };
                // Each row in folders of its own: what the rows before committed is no help.
                let row = commit_row(name, &urls, folders, secs).await;
                let usage: Vec<_> = procs.into_iter().map(ChildServer::stop).collect();
                rows.push(with_cpu(row, &usage));
            }
        }
        shared.remove().await;
    } else {
        println!("shared store: skipped (no cluster)");
    }
    println!(
        "{}",
        table(
            &[
                "servers",
                "folders",
                "commits",
                "commits/s",
                "p50 Commit",
                "p99 Commit",
                "p50 file",
                "p99 file",
                "errors",
                "server CPU",
            ],
            &rows
        )
    );
}

fn with_cpu(mut row: Vec<String>, usage: &[Usage]) -> Vec<String> {
    row.push(
        usage
            .iter()
            .map(|u| format!("{:.1} s", u.cpu_seconds))
            .collect::<Vec<_>>()
            .join(" + "),
    );
    row
}

/// Runs the clients against `urls` (client i on server i mod n); returns the row.
async fn commit_row(name: &str, urls: &[String], folders: Folders, secs: f64) -> Vec<String> {
    static ROW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let row = ROW.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut remotes = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let folder = match folders {
            Folders::Own => format!("r{row}-c{i}"),
            Folders::One => format!("r{row}-all"),
        };
        let device = format!("client{i}");
        let r = Remote::connect(&urls[i % urls.len()], None, &folder, &device)
            .await
            .expect("connect");
        remotes.push((r, folder, device));
    }
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = remotes
        .into_iter()
        .enumerate()
        .map(|(i, (mut r, folder, device))| {
            let tally = tally.clone();
            tokio::spawn(async move {
                if let Err(e) = committer(i, &mut r, &folder, &device, end, &tally).await {
                    lock(&tally).errors.push(format!("client {i}: {e:#}"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut t = std::mem::take(&mut *lock(&tally));
    for e in t.errors.iter().take(3) {
        println!("error: {e}");
    }
    vec![
        name.to_owned(),
        match folders {
            Folders::Own => "one each".into(),
            Folders::One => "one for all".into(),
        },
        t.commits.to_string(),
        format!("{:.0}", t.commits as f64 / elapsed),
        percentile(&mut t.commit_rpc, 0.5),
        percentile(&mut t.commit_rpc, 0.99),
        percentile(&mut t.whole, 0.5),
        percentile(&mut t.whole, 0.99),
        t.errors.len().to_string(),
    ]
}

fn lock(t: &std::sync::Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One client: until `end`, a new small file (200 B to 4 KiB), its missing chunks uploaded,
/// committed.
async fn committer(
    i: usize,
    r: &mut Remote,
    folder: &str,
    device: &str,
    end: Instant,
    tally: &std::sync::Mutex<Tally>,
) -> anyhow::Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        let t0 = Instant::now();
        let mut data = vec![0u8; rng.random_range(200..4096)];
        rng.fill_bytes(&mut data);
        let params = ChunkParams::DEFAULT.for_file(data.len() as u64);
        let chunks: Vec<_> = Chunker::new(&data[..], params).collect::<Result<_, _>>()?;
        let manifest = Manifest::new(chunks.iter().map(|(_, c)| c.chunk_ref()).collect());
        let ids: Vec<_> = chunks.iter().map(|(_, c)| c.id()).collect();
        let missing = r.missing(&ids).await?;
        if !missing.is_empty() {
            let (tx, handle) = r.put_chunks();
            let msg = pb::PutChunksRequest {
                chunks: chunks
                    .iter()
                    .filter(|(_, c)| missing.contains(&c.id()))
                    .map(|(_, c)| lbsync_proto::wire::encode_chunk(c.id(), c.data()))
                    .collect(),
                ..Default::default()
            };
            tx.send(msg).await?;
            drop(tx);
            handle.await??;
        }
        let path = if folder.ends_with("-all") {
            format!("c{i}/f{n:06}.txt")
        } else {
            format!("f{n:06}.txt")
        };
        let req = CommitRequest {
            folder: folder.to_owned(),
            entry: Entry::file(SyncPath::new(path)?, &manifest, device),
            base_version: 0,
            content: Some(Content::Full(manifest)),
        };
        let t1 = Instant::now();
        let res = r.commit(req).await?;
        let commit_rpc = t1.elapsed();
        match res {
            Committed::Outcome(CommitOutcome::Committed(_)) => {}
            Committed::Outcome(CommitOutcome::Conflict(e)) => {
                anyhow::bail!("a conflict on a new path (version {})", e.version)
            }
            Committed::MissingChunks(ids) => {
                anyhow::bail!("the server lacks {} chunks just sent", ids.len())
            }
            Committed::UnknownManifest => anyhow::bail!("unknown manifest on a full commit"),
        }
        let whole = t0.elapsed();
        let mut t = lock(tally);
        t.commits += 1;
        t.commit_rpc.push(commit_rpc);
        t.whole.push(whole);
    }
    Ok(())
}
