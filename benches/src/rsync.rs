//! rsync through a local daemon, the yardstick of the bandwidth benches.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A local rsync daemon with one writable module.
pub struct Rsync {
    daemon: Child,
    port: u16,
    root: PathBuf,
}

impl Rsync {
    /// Starts one under `tmp` when rsync is installed.
    pub fn start(tmp: &Path) -> Option<Self> {
        Command::new("rsync").arg("--version").output().ok()?;
        let root = tmp.join("rsync");
        std::fs::create_dir_all(root.join("dst")).ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let conf = root.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = false\nuid = root\ngid = root\n[m]\npath = {}\nread only = false\n",
                root.join("dst").display()
            ),
        )
        .ok()?;
        let daemon = Command::new("rsync")
            .args([
                "--daemon",
                "--no-detach",
                "--address",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .arg(format!("--config={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // Wait for the daemon to listen.
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self { daemon, port, root });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }

    /// Pushes `src/` into module subdirectory `dst`; returns (sent, received) from --stats.
    pub fn push(&self, src: &Path, dst: &str, compress: bool) -> (u64, u64) {
        let mut cmd = Command::new("rsync");
        cmd.args([
            "-a",
            "--no-whole-file",
            "--delete",
            "--stats",
            "--exclude",
            ".lbsync",
        ]);
        if compress {
            cmd.arg("-z");
        }
        let out = cmd
            .arg(format!("{}/", src.display()))
            .arg(format!("rsync://127.0.0.1:{}/m/{dst}/", self.port))
            .output()
            .expect("run rsync");
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| {
                    v.trim()
                        .replace(',', "")
                        .split_whitespace()
                        .next()
                        .unwrap_or("0")
                        .parse()
                        .unwrap_or(0)
                })
                .unwrap_or(0)
        };
        (field("Total bytes sent:"), field("Total bytes received:"))
    }
}

impl Drop for Rsync {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
