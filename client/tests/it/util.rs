//! A server on 127.0.0.1 with a temp store, clients, and tree comparison.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use lbsync_chunkstore::PackStore;
use lbsync_client::{Report, SyncOptions, Syncer};
use tokio::sync::oneshot;

pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) store_dir: std::path::PathBuf,
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<lbsync_server::Result<()>>>,
    tmp: Option<tempfile::TempDir>,
}

impl Server {
    pub(crate) async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Self::serve(tmp.path(), "127.0.0.1:0".parse().unwrap()).await;
        s.tmp = Some(tmp);
        s
    }

    /// A server with this configuration (TLS, tokens) on a temp store.
    pub(crate) async fn start_with(config: lbsync_server::ServerConfig) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let tls = config.tls.is_some();
        let mut s = Self::serve_with(tmp.path(), "127.0.0.1:0".parse().unwrap(), config).await;
        if tls {
            s.url = format!("https://localhost:{}", s.addr.port());
        }
        s.tmp = Some(tmp);
        s
    }

    async fn serve(store_dir: &Path, addr: std::net::SocketAddr) -> Self {
        Self::serve_with(store_dir, addr, Default::default()).await
    }

    async fn serve_with(
        store_dir: &Path,
        addr: std::net::SocketAddr,
        config: lbsync_server::ServerConfig,
    ) -> Self {
        let store = PackStore::open(store_dir).unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let shutdown = async {
            let _ = rx.await;
        };
        let handle = tokio::spawn(lbsync_server::run(listener, store, config, shutdown));
        Self {
            url: format!("http://{addr}"),
            store_dir: store_dir.to_path_buf(),
            addr,
            stop: Some(tx),
            handle: Some(handle),
            tmp: None,
        }
    }

    /// Stops the server, keeping its store; `restart` brings it back on the same address.
    pub(crate) async fn stop_keeping_store(mut self) -> StoppedServer {
        self.stop.take().unwrap().send(()).unwrap();
        self.handle.take().unwrap().await.unwrap().unwrap();
        StoppedServer {
            addr: self.addr,
            store_dir: self.store_dir.clone(),
            tmp: self.tmp.take(),
        }
    }

    pub(crate) async fn stop(self) {
        self.stop_keeping_store().await;
    }
}

pub(crate) struct StoppedServer {
    addr: std::net::SocketAddr,
    store_dir: std::path::PathBuf,
    tmp: Option<tempfile::TempDir>,
}

impl StoppedServer {
    pub(crate) async fn restart(mut self) -> Server {
        let mut s = Server::serve(&self.store_dir, self.addr).await;
        s.tmp = self.tmp.take();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

/// One sync of `dir` as device `device`.
pub(crate) async fn sync(dir: &Path, server: &Server, device: &str) -> Report {
    let opts = SyncOptions {
        server: Some(server.url.clone()),
        device: Some(device.into()),
        ..SyncOptions::default()
    };
    let mut s = Syncer::open(dir, &opts).await.unwrap();
    s.sync().await.unwrap()
}

/// Syncs the directories in turn until a round changes nothing (at most a few rounds).
pub(crate) async fn converge(dirs: &[&Path], server: &Server) {
    for _ in 0..4 {
        let mut moved = 0;
        for (i, d) in dirs.iter().enumerate() {
            let r = sync(d, server, &format!("dev{i}")).await;
            assert!(r.in_sync(), "{:?}", r.pending);
            moved += r.uploaded + r.downloaded + r.deleted_here + r.deleted_there;
        }
        if moved == 0 {
            return;
        }
    }
    panic!("no convergence after 4 rounds");
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Node {
    File { hash: String, exec: bool },
    Dir,
    Link(String),
}

/// Everything under `root` but `.lbsync/`, by relative path. A path that vanishes while it is
/// being read (a client at work) is left out: the next look sees the settled tree.
pub(crate) fn tree(root: &Path) -> BTreeMap<String, Node> {
    walk_tree(root, |link, data, mode| match (link, data) {
        (Some(target), _) => Node::Link(target),
        (None, Some(data)) => Node::File {
            hash: blake3::hash(&data).to_hex().to_string(),
            exec: mode & 0o111 != 0,
        },
        (None, None) => Node::Dir,
    })
}

/// Everything under `root` but `.lbsync/`, without following symlinks, by relative path: what
/// `node` makes of each (a link's target, a file's bytes and mode, or neither for a directory).
/// A path that vanishes or cannot be read while it is walked is left out.
pub(crate) fn walk_tree<N>(
    root: &Path,
    mut node: impl FnMut(Option<String>, Option<Vec<u8>>, u32) -> N,
) -> BTreeMap<String, N> {
    fn walk<N>(
        root: &Path,
        dir: &Path,
        node: &mut dyn FnMut(Option<String>, Option<Vec<u8>>, u32) -> N,
        out: &mut BTreeMap<String, N>,
    ) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".lbsync" {
                continue;
            }
            let Ok(md) = fs::symlink_metadata(&path) else {
                continue;
            };
            let mode = md.permissions().mode() & 0o777;
            if md.file_type().is_symlink() {
                if let Ok(t) = fs::read_link(&path) {
                    let t = t.to_string_lossy().into_owned();
                    out.insert(rel, node(Some(t), None, mode));
                }
            } else if md.is_dir() {
                out.insert(rel, node(None, None, mode));
                walk(root, &path, node, out);
            } else if let Ok(data) = fs::read(&path) {
                out.insert(rel, node(None, Some(data), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut node, &mut out);
    out
}

/// Bytes in the server's pack files.
pub(crate) fn stored_bytes(server: &Server) -> u64 {
    fs::read_dir(server.store_dir.join("packs"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Polls `cond` every 10 ms until it holds; fails after `secs` seconds, saying what it waited for.
pub(crate) async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

pub(crate) fn seeded(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub(crate) fn write(root: &Path, rel: &str, data: impl AsRef<[u8]>) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Runs the real `lbsync-client` binary with `args` to its end.
pub(crate) async fn run(args: Vec<String>) -> Output {
    run_env(args, &[]).await
}

/// [`run`] with these environment variables set.
pub(crate) async fn run_env(args: Vec<String>, env: &[(&str, &str)]) -> Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(crate::procs::CLIENT_BIN)
            .args(args)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

pub(crate) fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A finished command's stdout and stderr.
pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
