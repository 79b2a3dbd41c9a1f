//! Shared helpers of lbsync's benchmarks: seeded data, the machine's description, memory use and
//! table printing. The benches themselves are in `benches/`.

use std::fmt::Write as _;

pub mod rsync;

/// The benches measure what the binaries run, and the binaries use jemalloc.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `LBSYNC_BENCH_QUICK=1` shrinks every bench to a size that runs in seconds (CI uses it).
pub fn quick() -> bool {
    std::env::var_os("LBSYNC_BENCH_QUICK").is_some_and(|v| v != "0")
}

/// `len` pseudo-random bytes, the same for the same seed on every machine.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// "2 cores, AMD EPYC ..." from /proc/cpuinfo.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {model}")
}

/// Peak resident memory of this process so far, in bytes (VmHWM).
pub fn peak_rss() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

/// CPU time this process has used so far (all threads, user and system), in seconds.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields 14 and 15 (utime, stime), counted after the ")" that ends the command name, in
    // USER_HZ ticks (100 a second on Linux).
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    ticks as f64 / 100.0
}

/// Current resident memory of this process, in bytes (VmRSS).
pub fn rss() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A plain-text table with right-aligned columns after the first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let _ = if i == 0 {
                write!(out, "| {cell:<w$} ")
            } else {
                write!(out, "| {cell:>w$} ")
            };
        }
        out.push_str("|\n");
    };
    line(&mut out, header.to_vec());
    let _ = writeln!(
        out,
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in rows {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

/// A TCP proxy on 127.0.0.1 that counts the bytes crossing it in each direction: what lbsync
/// puts on the wire, gRPC and HTTP/2 framing included.
pub struct CountingProxy {
    /// `http://127.0.0.1:PORT` of the proxy.
    pub url: String,
    up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    down: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CountingProxy {
    /// Starts a proxy to `upstream` on the current tokio runtime.
    pub async fn start(upstream: std::net::SocketAddr) -> std::io::Result<Self> {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (u, d) = (u.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let frames = std::env::var_os("LBSYNC_BENCH_FRAMES").map(|_| Frames::default());
                    let (up, down) = (
                        frames.clone().map(|f| (f, true)),
                        frames.clone().map(|f| (f, false)),
                    );
                    tokio::join!(pump(cr, sw, u, up), pump(sr, cw, d, down));
                    if let Some(f) = frames {
                        f.print();
                    }
                });
            }
        });
        Ok(Self { url, up, down })
    }

    /// (client → server, server → client) bytes since the last call.
    pub fn take(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.up.swap(0, Ordering::Relaxed),
            self.down.swap(0, Ordering::Relaxed),
        )
    }
}

/// (frames, bytes) by (stream, client → server, frame type).
type FrameCounts = std::collections::BTreeMap<(u32, bool, u8), (u64, u64)>;

/// With `LBSYNC_BENCH_FRAMES` set, a connection's HTTP/2 frames, tallied by stream, direction
/// and type and printed when it closes: where a sync's bytes go (the client's streams are
/// 1, 3, 5… in the order of its calls; 0 is the connection's own frames).
#[derive(Clone, Default)]
struct Frames(std::sync::Arc<std::sync::Mutex<FrameCounts>>);

impl Frames {
    fn add(&self, stream: u32, up: bool, kind: u8, bytes: u64) {
        let mut t = self.0.lock().expect("frames");
        let e = t.entry((stream, up, kind)).or_default();
        e.0 += 1;
        e.1 += bytes;
    }

    fn print(&self) {
        const KINDS: [&str; 10] = [
            "DATA",
            "HEADERS",
            "PRIORITY",
            "RST_STREAM",
            "SETTINGS",
            "PUSH_PROMISE",
            "PING",
            "GOAWAY",
            "WINDOW_UPDATE",
            "CONTINUATION",
        ];
        let t = self.0.lock().expect("frames");
        let total: u64 = t.values().map(|v| v.1).sum();
        eprintln!("connection: {total} B in frames");
        for ((stream, up, kind), (n, bytes)) in t.iter() {
            eprintln!(
                "  stream {stream:>3} {} {:<13} {n:>4} frames {bytes:>8} B",
                if *up { "up  " } else { "down" },
                KINDS.get(usize::from(*kind)).unwrap_or(&"?")
            );
        }
    }
}

/// Splits a direction's bytes into HTTP/2 frames (after the client's 24-byte preface).
struct FrameParser {
    frames: Frames,
    up: bool,
    skip: usize,
    header: Vec<u8>,
    body_left: usize,
}

impl FrameParser {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                if self.header.len() == 9 {
                    let h = std::mem::take(&mut self.header);
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    self.frames.add(stream, self.up, h[3], 9 + len as u64);
                    self.body_left = len;
                }
            }
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    frames: Option<(Frames, bool)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 256 << 10];
    let mut parser = frames.map(|(frames, up)| FrameParser {
        frames,
        up,
        skip: if up { 24 } else { 0 },
        header: Vec::new(),
        body_left: 0,
    });
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(p) = &mut parser {
            p.feed(&buf[..n]);
        }
        count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// An lbsync server on 127.0.0.1 in this process, on a store in `dir` created with `params`.
pub struct BenchServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<lbsync_server::Result<()>>>,
}

impl BenchServer {
    /// Starts it.
    pub async fn start(dir: &std::path::Path, params: lbsync_chunkstore::ChunkParams) -> Self {
        let opts = lbsync_chunkstore::StoreOptions {
            params,
            ..Default::default()
        };
        let store = lbsync_chunkstore::PackStore::open_with(dir, &opts).expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shutdown = async {
            let _ = rx.await;
        };
        let handle = tokio::spawn(lbsync_server::run(
            listener,
            store,
            Default::default(),
            shutdown,
        ));
        Self {
            addr,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops it and waits until its store is closed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

/// The runtime the benches run on: two workers, like the machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One `sync` of `dir` against server folder `folder` at `url`, which must leave them in step.
pub async fn sync(
    dir: &std::path::Path,
    url: &str,
    device: &str,
    folder: &str,
) -> lbsync_client::Report {
    let opts = lbsync_client::SyncOptions {
        server: Some(url.to_owned()),
        device: Some(device.to_owned()),
        folder: Some(folder.to_owned()),
        ..Default::default()
    };
    let mut s = lbsync_client::Syncer::open(dir, &opts)
        .await
        .expect("connect");
    let r = s.sync().await.expect("sync");
    assert!(r.in_sync(), "{:?}", r.pending);
    r
}

/// Sets `dir` up for the encrypted folder `folder` on `url` with `passphrase` (kept in a file
/// beside `dir`): `create` makes the folder encrypted, else `dir` joins it.
pub async fn encrypted_folder(
    dir: &std::path::Path,
    url: &str,
    folder: &str,
    device: &str,
    passphrase: &str,
    create: bool,
) {
    let key = dir.with_extension("passphrase");
    std::fs::write(&key, format!("{passphrase}\n")).expect("write the passphrase file");
    let opts = lbsync_client::SyncOptions {
        server: Some(url.to_owned()),
        device: Some(device.to_owned()),
        folder: Some(folder.to_owned()),
        ..Default::default()
    };
    let how = lbsync_client::keys::InitOptions {
        encrypt: create,
        passphrase: lbsync_client::keys::Passphrase { file: Some(key) },
        identity: None,
    };
    lbsync_client::keys::init(dir, &opts, &how)
        .await
        .expect("init the encrypted folder");
}

/// A generated source tree: `files` text files of a few KB in nested directories, the same for
/// the same seed.
pub fn source_tree(root: &std::path::Path, files: usize, seed: u64) -> Vec<std::path::PathBuf> {
    use rand::{Rng, SeedableRng};
    const WORDS: &[&str] = &[
        "fn", "let", "mut", "match", "impl", "struct", "self", "return", "if", "else", "for", "in",
        "while", "loop", "pub", "use", "crate", "mod", "Result", "Option", "Some", "None", "Ok",
        "Err", "String", "Vec", "u64", "usize", "bytes", "chunk", "store", "manifest", "path",
        "server", "client", "sync", "error", "value", "index", "offset", "len", "data", "=", "{",
        "}", "(", ")", ";", "->", "&", "::", "<", ">",
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut paths = Vec::with_capacity(files);
    for i in 0..files {
        let rel = format!("src/m{:02}/s{:02}/file{i:05}.rs", i % 37, (i / 37) % 11);
        let lines = rng.random_range(40..300);
        let mut text = String::new();
        for _ in 0..lines {
            let indent = rng.random_range(0..4) * 4;
            text.push_str(&" ".repeat(indent));
            for _ in 0..rng.random_range(2..12) {
                text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
                text.push(' ');
            }
            text.push('\n');
        }
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        paths.push(p);
    }
    paths
}

/// A "patch release" of a tree made by [`source_tree`]: a few dozen files edited in a few places,
/// a few added and a few removed.
pub fn patch_release(root: &std::path::Path, files: &[std::path::PathBuf], seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let edits = (files.len() / 50).max(3);
    for _ in 0..edits {
        let p = &files[rng.random_range(0..files.len())];
        let Ok(text) = std::fs::read_to_string(p) else {
            continue;
        };
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..lines.len().max(1));
            if rng.random_bool(0.5) {
                lines.insert(at, format!("    // patched {}", rng.random::<u32>()));
            } else if at < lines.len() {
                lines[at] = format!("    let fixed = {};", rng.random::<u16>());
            }
        }
        std::fs::write(p, lines.join("\n") + "\n").expect("write");
    }
    for i in 0..(files.len() / 400).max(2) {
        let _ = std::fs::remove_file(&files[(i * 7919) % files.len()]);
        let p = root.join(format!("src/new/added{i}.rs"));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(
            p,
            format!("pub fn added{i}() -> u32 {{ {i} }}\n").repeat(50),
        )
        .expect("write");
    }
}

/// What a naive client uploads after a change: the whole of every file that is new or differs
/// from `before` (a map of path to content hash made by [`snapshot`]).
pub fn changed_bytes(
    root: &std::path::Path,
    before: &std::collections::HashMap<std::path::PathBuf, blake3::Hash>,
) -> u64 {
    snapshot(root)
        .into_iter()
        .filter(|(p, h)| before.get(p) != Some(h))
        .map(|(p, _)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Every regular file under `root`, `.lbsync/` excluded.
fn files(root: &std::path::Path) -> Vec<(std::path::PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".lbsync") {
                continue;
            }
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) => out.push((p, m)),
                Err(_) => {}
            }
        }
    }
    out
}

/// Every regular file under `root` (`.lbsync/` excluded) with the hash of its content.
pub fn snapshot(
    root: &std::path::Path,
) -> std::collections::HashMap<std::path::PathBuf, blake3::Hash> {
    files(root)
        .into_iter()
        .filter_map(|(p, _)| std::fs::read(&p).ok().map(|d| (p, blake3::hash(&d))))
        .collect()
}

/// Total size of the regular files under `root`, `.lbsync/` excluded.
pub fn tree_bytes(root: &std::path::Path) -> u64 {
    files(root).iter().map(|(_, m)| m.len()).sum()
}

/// The bandwidth bench's edits of one file, `file.bin`, which the encrypted bench repeats.
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(missing_docs)] // the names say it, and `name` says it in words
pub enum Edit {
    Insert1,
    Overwrite4K,
    Append1M,
    Prepend100,
    Rename,
    Copy,
}

impl Edit {
    /// Every edit, in the order the tables list them.
    pub const ALL: [Edit; 6] = [
        Edit::Insert1,
        Edit::Overwrite4K,
        Edit::Append1M,
        Edit::Prepend100,
        Edit::Rename,
        Edit::Copy,
    ];

    /// The edit in words.
    pub fn name(self) -> &'static str {
        match self {
            Edit::Insert1 => "insert 1 byte in the middle",
            Edit::Overwrite4K => "overwrite 4 KiB",
            Edit::Append1M => "append 1 MiB",
            Edit::Prepend100 => "prepend 100 bytes",
            Edit::Rename => "rename",
            Edit::Copy => "copy to a second name",
        }
    }

    /// Applies the edit to `dir/file.bin`; returns what a naive client would upload.
    pub fn apply(self, dir: &std::path::Path, base: &[u8]) -> u64 {
        let f = dir.join("file.bin");
        let mut data = base.to_vec();
        match self {
            Edit::Insert1 => data.insert(data.len() / 2, b'!'),
            Edit::Overwrite4K => {
                let at = data.len() / 3;
                data[at..at + 4096].copy_from_slice(&random_bytes(4096, 99));
            }
            Edit::Append1M => data.extend_from_slice(&random_bytes(1 << 20, 98)),
            Edit::Prepend100 => {
                data.splice(0..0, random_bytes(100, 97));
            }
            Edit::Rename => {
                std::fs::rename(&f, dir.join("renamed.bin")).expect("rename");
                return base.len() as u64;
            }
            Edit::Copy => {
                std::fs::copy(&f, dir.join("copy.bin")).expect("copy");
                return base.len() as u64;
            }
        }
        std::fs::write(&f, &data).expect("write");
        data.len() as u64
    }
}

/// Set in a bench's server child: the store directory to serve.
const CHILD_STORE_VAR: &str = "LBSYNC_BENCH_SERVE_STORE";

/// Set in a bench's server child of a shared store: `STORE_URL\x1fMETADATA_URL`.
const CHILD_SHARED_VAR: &str = "LBSYNC_BENCH_SERVE_SHARED";

/// An lbsync server in a child process (this bench binary re-run), so that its memory and CPU
/// are its own. A bench's `main` calls [`ChildServer::serve_if_child`] first.
pub struct ChildServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl ChildServer {
    /// In the child, serves until stdin closes, prints the peak RSS, and returns true (the bench's
    /// `main` then returns); in the bench itself returns false.
    #[allow(clippy::print_stdout)] // stdout is the pipe to the parent: address, then peak RSS
    pub fn serve_if_child() -> bool {
        let (local, shared) = match (
            std::env::var(CHILD_STORE_VAR).ok(),
            std::env::var(CHILD_SHARED_VAR).ok(),
        ) {
            (None, None) => return false,
            both => both,
        };
        runtime().block_on(async {
            use std::io::Write;
            let backend = match (local, shared) {
                (Some(dir), _) => {
                    let store = lbsync_chunkstore::PackStore::open(&dir).expect("open store");
                    lbsync_server::Backend::local(store).expect("open the store's metadata")
                }
                (None, urls) => {
                    let (store, metadata) = urls
                        .as_deref()
                        .and_then(|u| u.split_once('\x1f'))
                        .map(|(s, m)| (s.to_owned(), m.to_owned()))
                        .expect("store and metadata URLs");
                    // The PostgreSQL client blocks (and runs a runtime of its own).
                    tokio::task::spawn_blocking(move || {
                        lbsync_server::Backend::shared(&store, &metadata, true)
                    })
                    .await
                    .expect("join")
                    .expect("open the shared store")
                }
            };
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
            lbsync_server::run(listener, backend, Default::default(), shutdown)
                .await
                .expect("serve");
            println!("{} {}", peak_rss(), cpu_seconds());
        });
        true
    }

    /// Starts a server on a store in `store`.
    pub fn start(store: &std::path::Path) -> Self {
        Self::spawn(CHILD_STORE_VAR, store.as_os_str())
    }

    /// Starts a server on a store that several servers share: packs at `store` (an `s3://` URL,
    /// created if there is none), metadata in the PostgreSQL database at `metadata`.
    pub fn start_shared(store: &str, metadata: &str) -> Self {
        Self::spawn(CHILD_SHARED_VAR, format!("{store}\x1f{metadata}").as_ref())
    }

    fn spawn(var: &str, value: &std::ffi::OsStr) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .env(var, value)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = lines
            .next()
            .and_then(|l| l.ok())
            .and_then(|l| l.parse().ok())
            .expect("the server's address");
        Self { addr, child, lines }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and returns what it used.
    pub fn stop(mut self) -> Usage {
        drop(self.child.stdin.take());
        let line = self.lines.next().and_then(|l| l.ok()).unwrap_or_default();
        let mut fields = line.split_whitespace();
        let usage = Usage {
            peak_rss: fields.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            cpu_seconds: fields.next().and_then(|v| v.parse().ok()).unwrap_or(0.0),
        };
        let _ = self.child.wait();
        usage
    }
}

/// What a [`ChildServer`] used over its life.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// Peak resident memory, bytes.
    pub peak_rss: u64,
    /// CPU time, all threads, seconds.
    pub cpu_seconds: f64,
}

/// Set in a bench's sync child: `dir\x1furl\x1fdevice`.
const CHILD_SYNC_VAR: &str = "LBSYNC_BENCH_SYNC";

/// A `sync` run in a child process (this bench binary re-run), so that its peak RSS is its own.
pub struct ChildSync {
    /// What the sync reported.
    pub report: String,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The child's peak RSS in bytes.
    pub peak_rss: u64,
}

impl ChildSync {
    /// In the child, syncs, prints the report and the peak RSS, and returns true (the bench's
    /// `main` then returns); in the bench itself returns false.
    #[allow(clippy::print_stdout)] // stdout is the pipe to the parent
    pub fn sync_if_child() -> bool {
        let Ok(args) = std::env::var(CHILD_SYNC_VAR) else {
            return false;
        };
        let mut parts = args.split('\x1f');
        let (dir, url, device) = (
            parts.next().expect("dir"),
            parts.next().expect("url"),
            parts.next().expect("device"),
        );
        let report = runtime().block_on(sync(std::path::Path::new(dir), url, device, "default"));
        println!("{report}");
        println!("{}", peak_rss());
        true
    }

    /// Runs one `sync` of `dir` in a child process.
    pub fn run(dir: &std::path::Path, url: &str, device: &str) -> Self {
        let start = std::time::Instant::now();
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .env(
                CHILD_SYNC_VAR,
                format!("{}\x1f{url}\x1f{device}", dir.display()),
            )
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the sync child");
        let seconds = start.elapsed().as_secs_f64();
        assert!(out.status.success(), "the sync child failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().rev();
        let peak_rss = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        let report = lines.next().unwrap_or_default().to_owned();
        Self {
            report,
            seconds,
            peak_rss,
        }
    }
}
