//! The real `lbsync-server` binary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lbsync-server");

/// Runs `lbsync-server --store STORE ARGS`: (success, stdout, stderr).
#[allow(clippy::unwrap_used)] // a test helper: a failure is a test failure
pub(crate) fn run_on(store: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["--store", store.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Kills the child if the test fails before it stops it.
pub(crate) struct Reaper(pub(crate) std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `lbsync-server` serving `store` on a port the OS picks; waits for its "serving ... on ADDR"
/// line and returns the process, that line, the address, and every line logged until then.
#[allow(clippy::unwrap_used)] // a test helper: a failure is a test failure
fn serve(store: &std::path::Path) -> (Reaper, String, std::net::SocketAddr, Vec<String>) {
    serve_with(store, &[], &[])
}

/// [`serve`] with more arguments and environment variables.
#[allow(clippy::unwrap_used)] // a test helper: a failure is a test failure
pub(crate) fn serve_with(
    store: &std::path::Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (Reaper, String, std::net::SocketAddr, Vec<String>) {
    let mut child = Command::new(BIN)
        .args([
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Reaper(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the server logs that it serves");
        seen.push(line.clone());
        if let Some(rest) = line
            .split(" on ")
            .nth(1)
            .filter(|_| line.contains("serving"))
        {
            let addr = rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(',')
                .parse()
                .unwrap();
            return (child, line, addr, seen);
        }
    }
}

#[test]
fn binary_serves_stops_on_sigterm_and_runs_admin_commands() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (mut child, _, addr, _) = serve(&store);
    let addr = addr.to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store_id = rt.block_on(async {
        let mut c = crate::util::connect(addr.parse().unwrap(), None).await;
        let hs = crate::util::handshake(&mut c, "default").await;
        assert_eq!(hs.head, 0);
        assert_eq!(hs.store_id.len(), 32, "{hs:?}");
        let (m, _) = crate::util::upload(&mut c, b"from the binary test").await;
        let content = lbsync_proto::Content::Full(m.clone());
        crate::util::commit(
            &mut c,
            crate::util::file_commit("default", "f.txt", &m, 0, content),
        )
        .await;
        hs.store_id
    });
    drop(rt);

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.0.wait().unwrap().success(), "exits 0 after SIGTERM");

    let packs = |dir: &std::path::Path| {
        let mut out: Vec<(std::path::PathBuf, String)> = std::fs::read_dir(dir.join("packs"))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let h = blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string();
                (p, h)
            })
            .collect();
        out.sort();
        out
    };
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--store", store.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, stats) = run(&["stats"]);
    assert!(ok && stats.contains("files:          1 (20 B)"), "{stats}");
    assert!(
        stats.contains(&format!("store id:       {store_id}")),
        "stats shows the id the handshake announced: {stats}"
    );
    let (ok, fsck) = run(&["fsck"]);
    assert!(ok && fsck.contains("store is clean"), "{fsck}");
    let (ok, gc) = run(&["gc", "--dry-run"]);
    assert!(ok && gc.contains("would keep 1 version"), "{gc}");

    // A torn tail, as a crash in the middle of an append leaves: the commands that only look
    // must leave it (and every other pack byte) alone.
    let last = packs(&store).last().unwrap().0.clone();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(b"LBCR torn")
        .unwrap();
    let before = packs(&store);
    let (ok, fsck) = run(&["fsck"]);
    assert!(!ok && fsck.contains("unfinished record"), "{fsck}");
    assert!(run(&["stats"]).0);
    assert!(run(&["gc", "--dry-run"]).0);
    assert_eq!(
        packs(&store),
        before,
        "fsck, stats and gc --dry-run change no pack"
    );
    let (ok, fsck) = run(&["fsck", "--repair"]);
    assert!(ok, "{fsck}");
    assert_ne!(packs(&store), before, "fsck --repair cuts the torn tail");
}

#[test]
fn refuses_public_address_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "--store",
            dir.path().to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without a token file"),
        "{err}"
    );
}

#[test]
fn refuses_public_address_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "--store",
            dir.path().to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
            "--insecure-no-auth",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without TLS")
            && err.contains("lbsync-server cert")
            && err.contains("--insecure-plaintext"),
        "{err}"
    );
}

/// `cert` makes a certificate once (and will not replace it by accident); the server then
/// serves it and prints the fingerprint clients pin.
#[test]
fn cert_makes_a_certificate_that_the_server_serves_with_its_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cert = |more: &[&str]| {
        let out = Command::new(BIN)
            .args([
                "--store",
                store.to_str().unwrap(),
                "cert",
                "--name",
                "localhost",
            ])
            .args(more)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, made) = cert(&[]);
    assert!(
        !ok && made.contains("lbsync-server init"),
        "no store yet: {made}"
    );
    assert!(!store.exists(), "a refused cert creates nothing");
    let init = Command::new(BIN)
        .args(["--store", store.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let (ok, made) = cert(&[]);
    assert!(ok, "{made}");
    let fingerprint = made
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .expect("the fingerprint is printed")
        .to_owned();
    assert!(made.contains(&format!("--pin {fingerprint}")), "{made}");
    let (ok, again) = cert(&[]);
    assert!(!ok && again.contains("--force"), "{again}");

    let (_child, serving, _, seen) = serve(&store);
    assert!(serving.contains("with TLS"), "{serving}");
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("TLS certificate {fingerprint}"))),
        "{seen:?}"
    );
}

/// The server's log goes to stderr; when nobody reads it any more (a closed pipe, a terminal
/// gone), requests must go on succeeding and the server must stay up.
#[test]
fn a_closed_stderr_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut child = Command::new(BIN)
        .args([
            "--store",
            store.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = Reaper(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("server started").unwrap();
        if let Some(rest) = line
            .split(" on ")
            .nth(1)
            .filter(|_| line.contains("serving"))
        {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Close the read end: from here on every log line meets a broken pipe.
    drop(lines);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = crate::util::connect(addr.parse().unwrap(), None).await;
        for i in 0..20u64 {
            let hs = crate::util::handshake(&mut c, "default").await;
            assert_eq!(hs.head, i);
            let data = crate::util::seeded(20_000, i);
            let (m, _) = crate::util::upload(&mut c, &data).await;
            let content = lbsync_proto::Content::Full(m.clone());
            let path = format!("f{i}.bin");
            crate::util::committed(
                crate::util::commit(
                    &mut c,
                    crate::util::file_commit("default", &path, &m, 0, content),
                )
                .await,
            );
            assert_eq!(crate::util::download(&mut c, &m).await, data);
        }
    });
    drop(rt);
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.0.wait().unwrap().success(), "exits 0 after SIGTERM");

    // A report whose reader has gone: the command still succeeds, without a panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["stats", "--store", store.to_str().unwrap()])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{err}");
}

/// `user`, `token`, `share` and `unshare` on a stopped server's store, then on a running one's
/// through its admin socket: a revoked token is refused at once.
#[test]
fn users_tokens_and_shares_through_the_binary_stopped_and_running() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let run = |args: &[&str]| run_on(&store, args);
    let token_of = |out: &str| out.lines().next().unwrap().trim().to_owned();
    let id_of = |token: &str| token.split('_').nth(1).unwrap().to_owned();

    // Stopped.
    let (ok, _, err) = run(&["user", "add", "alice"]);
    assert!(
        !ok && err.contains("lbsync-server init"),
        "no store yet: {err}"
    );
    let (ok, out, err) = run(&["init"]);
    assert!(ok && out.contains("created a store"), "{out}{err}");
    let (ok, out, _) = run(&["user", "add", "alice"]);
    assert!(ok && out.contains("added user alice"), "{out}");
    let (ok, _, err) = run(&["user", "add", "alice"]);
    assert!(!ok && err.contains("user alice exists already"), "{err}");
    let (ok, _, err) = run(&["token", "create", "--user", "nobody"]);
    assert!(!ok && err.contains("no user \"nobody\""), "{err}");
    let (ok, out, _) = run(&["token", "create", "--user", "alice"]);
    assert!(ok && out.contains("shown this once"), "{out}");
    let alice = token_of(&out);
    assert!(alice.starts_with("lbs_"), "{out}");

    let (mut child, serving, addr, _) = serve(&store);
    assert!(serving.contains("tokens required"), "{serving}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hs = |token: Option<String>, folder: &'static str| {
        rt.block_on(async move {
            let mut c = crate::util::connect(addr, token.as_deref()).await;
            c.handshake(lbsync_proto::pb::HandshakeRequest {
                protocol_version: lbsync_proto::PROTOCOL_VERSION,
                folder: folder.into(),
                device: "cli-test".into(),
            })
            .await
            .map(drop)
            .map_err(|s| s.code())
        })
    };
    assert_eq!(hs(None, "a"), Err(tonic::Code::Unauthenticated));
    assert_eq!(hs(Some(alice.clone()), "a"), Ok(()), "alice makes folder a");

    // Running: through the admin socket.
    let (ok, out, err) = run(&["user", "add", "bob"]);
    assert!(ok && out.contains("added user bob"), "{out}{err}");
    let (ok, out, _) = run(&["token", "create", "--user", "bob", "--read-only"]);
    assert!(ok, "{out}");
    let bob = token_of(&out);
    assert_eq!(
        hs(Some(bob.clone()), "a"),
        Err(tonic::Code::PermissionDenied)
    );
    let (ok, _, err) = run(&["share", "nonesuch", "--with", "bob"]);
    assert!(!ok && err.contains("no folder \"nonesuch\""), "{err}");
    let (ok, out, _) = run(&["share", "a", "--with", "bob", "--read-only"]);
    assert!(ok && out.contains("shared with bob, read-only"), "{out}");
    assert_eq!(hs(Some(bob.clone()), "a"), Ok(()));
    let (ok, out, _) = run(&["user", "list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("alice\n") && out.contains("  folder a  owner"),
        "{out}"
    );
    assert!(
        out.contains(&format!("  token {}  read-only", id_of(&bob))),
        "{out}"
    );
    assert!(out.contains("  folder a  read-only"), "{out}");
    assert!(!out.contains(&bob), "a token is shown only once: {out}");
    let (ok, out, _) = run(&["token", "revoke", &id_of(&alice)]);
    assert!(ok && out.contains("revoked token"), "{out}");
    assert_eq!(hs(Some(alice), "a"), Err(tonic::Code::Unauthenticated));
    let (ok, out, _) = run(&["unshare", "a", "--with", "bob"]);
    assert!(ok && out.contains("no longer shared"), "{out}");
    assert_eq!(hs(Some(bob), "a"), Err(tonic::Code::PermissionDenied));
    let (ok, _, err) = run(&["stats"]);
    assert!(
        !ok && err.contains(&format!("locked by lbsync-server pid {}", child.0.id())),
        "other commands still need the server stopped, and say which one: {err}"
    );
    drop(rt);

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.0.wait().unwrap().success(), "exits 0 after SIGTERM");
    assert!(
        !store.join("admin.sock").exists(),
        "the socket goes with the server"
    );
}
