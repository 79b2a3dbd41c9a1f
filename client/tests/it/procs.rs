//! Processes a test can SIGKILL: the server (this test binary re-run as `lbsync-server`, the same
//! code as the real binary's `main`) and `lbsync-client watch` (the real binary).

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_lbsync-client");

/// Set in the child: the server's arguments, separated by `\x1f`.
const CHILD_ENV: &str = "LBSYNC_TEST_SERVER_ARGS";

/// Not a test: the entry point of the server child process (a no-op in a normal run).
#[test]
fn server_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args = std::iter::once("lbsync-server").chain(args.split('\x1f'));
    let code = lbsync_server::cli::main(args);
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

/// Runs `lbsync-server ARGS` (this test binary re-run as the server's `main`) to its end: an admin
/// command such as `token revoke`.
pub(crate) fn server_command(args: &[&str]) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "procs::server_child", "--nocapture"])
        .env(CHILD_ENV, args.join("\x1f"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `lbsync-server` in a child process on a store that outlives it, on a port the OS picked once.
pub(crate) struct ServerProc {
    pub(crate) url: String,
    pub(crate) store: PathBuf,
    addr: SocketAddr,
    log: PathBuf,
    /// `RUST_LOG` for the server.
    log_level: String,
    /// Arguments after `--store STORE --listen ADDR`.
    extra: Vec<String>,
    child: Option<Child>,
}

impl ServerProc {
    /// Starts a server on `store` and waits until it accepts connections.
    pub(crate) fn start(store: &Path) -> Self {
        Self::start_logging(store, "warn")
    }

    /// [`ServerProc::start`] with the server's log at `level` (`RUST_LOG`).
    pub(crate) fn start_logging(store: &Path, level: &str) -> Self {
        Self::start_with(store, &[], store.with_extension("server.log"), level)
    }

    /// A server of a shared store: packs at the object store URL `store`, metadata at the
    /// PostgreSQL URL `metadata`; its log goes to `log`.
    pub(crate) fn start_shared(store: &str, metadata: &str, log: PathBuf) -> Self {
        Self::start_with(Path::new(store), &["--metadata", metadata], log, "info")
    }

    fn start_with(store: &Path, extra: &[&str], log: PathBuf, level: &str) -> Self {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut s = Self {
            url: format!("http://{addr}"),
            store: store.to_path_buf(),
            addr,
            log,
            log_level: level.to_owned(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        s.restart();
        s
    }

    /// (Re)starts the server on the same store and port.
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut args = vec![
            "--store".to_owned(),
            self.store.to_str().unwrap().to_owned(),
            "--listen".to_owned(),
            self.addr.to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        let args = args.join("\x1f");
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "procs::server_child", "--nocapture"])
            .env(CHILD_ENV, args)
            .env("RUST_LOG", &self.log_level)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(self.addr).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the server exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, and the exit status.
    pub(crate) fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        c.wait().unwrap().success()
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `lbsync-server fsck` on the (stopped) store: its report, and whether it is clean.
    pub(crate) fn fsck(&self) -> (String, bool) {
        assert!(self.child.is_none(), "stop the server before fsck");
        let store = lbsync_chunkstore::PackStore::open(&self.store).unwrap();
        let report = lbsync_server::admin::fsck(&store, false).unwrap();
        (report.to_string(), report.is_clean())
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `watch` process, killed when dropped; its output goes to a log file for failure reports.
pub(crate) struct Watcher {
    child: Child,
    log: PathBuf,
}

impl Watcher {
    pub(crate) fn start(dir: &Path, server: &str, device: &str) -> Self {
        let log = dir.with_extension(format!("{device}.log"));
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(CLIENT_BIN)
            .args([
                "watch",
                dir.to_str().unwrap(),
                "--server",
                server,
                "--device",
                device,
                "--debounce-ms",
                "50",
            ])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has not exited.
    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub(crate) fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and whether it exited 0 (if not, its status and log's end are printed).
    pub(crate) fn stop(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        if !status.success() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!(
                "watcher {} ended with {status}; its log ends:\n{tail}",
                self.log.display()
            );
        }
        status.success()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
