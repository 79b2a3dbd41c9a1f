//! End-to-end encrypted folders against a server that is honest but curious: what the server
//! keeps holds nothing of the names and contents (a marker grepped for in the whole store and
//! the server's log), a wrong passphrase writes nothing, and a passphrase change keeps the data
//! and the devices joined before. Also the helpers the hostile-server tests use.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;

use crate::procs::ServerProc;
use crate::util::*;

/// Passphrase wrapping with a tiny scrypt work factor: tests only.
pub(crate) const FAST_KDF: [(&str, &str); 1] = [("LBSYNC_SCRYPT_LOG_N", "10")];

/// A key file (outside any synced directory) holding `passphrase` on its first line.
pub(crate) fn key_file(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{passphrase}\n")).unwrap();
    p
}

/// `lbsync-client init DIR` for `folder` on `url` with the passphrase in `key`; `encrypt`
/// makes the folder, else joins it.
pub(crate) async fn init(dir: &Path, url: &str, folder: &str, key: &Path, encrypt: bool) -> Output {
    let mut a = args(&[
        "init",
        dir.to_str().unwrap(),
        "--server",
        url,
        "--folder",
        folder,
        "--key-file",
        key.to_str().unwrap(),
    ]);
    if encrypt {
        a.push("--encrypt".into());
    }
    run_env(a, &FAST_KDF).await
}

/// [`init`] that must succeed.
pub(crate) async fn init_ok(dir: &Path, url: &str, folder: &str, key: &Path, encrypt: bool) {
    let out = init(dir, url, folder, key, encrypt).await;
    assert!(
        out.status.success(),
        "init {}: {}",
        dir.display(),
        text(&out)
    );
}

/// `lbsync-client sync DIR --server URL --device DEVICE`.
pub(crate) async fn sync_bin(dir: &Path, url: &str, device: &str) -> Output {
    run_env(
        args(&[
            "sync",
            dir.to_str().unwrap(),
            "--server",
            url,
            "--device",
            device,
        ]),
        &FAST_KDF,
    )
    .await
}

/// [`sync_bin`] that must end in sync.
pub(crate) async fn sync_ok(dir: &Path, url: &str, device: &str) {
    let out = sync_bin(dir, url, device).await;
    assert!(
        out.status.success(),
        "sync {}: {}",
        dir.display(),
        text(&out)
    );
}

/// Two devices' directories on one encrypted folder of `server`: `a` made it, `b` joined.
pub(crate) struct Pair {
    pub(crate) a: tempfile::TempDir,
    pub(crate) b: tempfile::TempDir,
    pub(crate) keys: tempfile::TempDir,
    pub(crate) key: PathBuf,
}

impl Pair {
    /// A new folder `folder`: encrypted (`a` makes it with `init --encrypt`, `b` joins), or
    /// plain (both only sync).
    pub(crate) async fn new(url: &str, folder: &str, encrypted: bool) -> Self {
        let (a, b, keys) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let key = key_file(keys.path(), "pass", "correct horse battery staple");
        if encrypted {
            init_ok(a.path(), url, folder, &key, true).await;
            init_ok(b.path(), url, folder, &key, false).await;
        } else {
            for d in [a.path(), b.path()] {
                let out = run(args(&[
                    "sync",
                    d.to_str().unwrap(),
                    "--server",
                    url,
                    "--folder",
                    folder,
                ]))
                .await;
                assert!(out.status.success(), "{}", text(&out));
            }
        }
        Self { a, b, keys, key }
    }

    pub(crate) fn a(&self) -> &Path {
        self.a.path()
    }

    pub(crate) fn b(&self) -> &Path {
        self.b.path()
    }
}

/// What `lbsync-client status DIR --json` says.
pub(crate) async fn status_json(dir: &Path) -> serde_json::Value {
    let out = run(args(&["status", dir.to_str().unwrap(), "--json"])).await;
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// The files and directories of `dir` (but `.lbsync/`), and whether it holds `.lbsync/`.
fn contents(dir: &Path) -> (Vec<String>, bool) {
    let mut names: Vec<String> = tree(dir).into_keys().collect();
    names.sort();
    (names, dir.join(".lbsync").exists())
}

/// The marker's spellings to look for: itself, hex (both cases), base64 (standard and URL-safe,
/// each at the three alignments a marker inside a longer text can have), and UTF-16 (LE, BE).
fn spellings(marker: &str) -> Vec<(String, Vec<u8>)> {
    let m = marker.as_bytes();
    let mut out = vec![("plain".to_string(), m.to_vec())];
    let hex: String = m.iter().map(|b| format!("{b:02x}")).collect();
    out.push(("hex".into(), hex.clone().into_bytes()));
    out.push(("HEX".into(), hex.to_uppercase().into_bytes()));
    for (name, engine) in [
        ("base64", &base64::engine::general_purpose::STANDARD_NO_PAD),
        (
            "base64url",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ),
    ] {
        for lead in 0..3usize {
            // `lead` bytes before the marker share the first group of four characters with it:
            // keep only the groups made of the marker's bytes alone.
            let mut v = vec![0u8; lead];
            v.extend_from_slice(m);
            let enc = engine.encode(&v);
            let used = (3 - lead) % 3;
            let start = if lead == 0 { 0 } else { 4 };
            let groups = (m.len() - used) / 3;
            out.push((
                format!("{name}@{lead}"),
                enc.as_bytes()[start..start + 4 * groups].to_vec(),
            ));
        }
    }
    let le: Vec<u8> = marker.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = marker.encode_utf16().flat_map(u16::to_be_bytes).collect();
    out.push(("utf16le".into(), le));
    out.push(("utf16be".into(), be));
    out
}

/// Every file under `root` (recursively, whatever it is), and where each spelling of the marker
/// occurs: `(file, spelling)`.
fn grep_tree(root: &Path, spellings: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    assert!(
        !files.is_empty(),
        "nothing to grep under {}",
        root.display()
    );
    let mut found = Vec::new();
    for f in files {
        let data = std::fs::read(&f).unwrap();
        for (name, s) in spellings {
            if data.windows(s.len()).any(|w| w == s.as_slice()) {
                found.push((f.display().to_string(), name.clone()));
            }
        }
    }
    found
}

/// Writes the marker into contents and names on `a`, syncs it through two devices (a uploads,
/// b downloads, b edits, a gets the edit), stops the server, and greps its store and its log:
/// the places the marker was found.
async fn marker_run(encrypted: bool) -> Vec<(String, String)> {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut server = ServerProc::start_logging(&store, "debug");
    let marker = format!("mk{}", random_hex(12));
    let pair = Pair::new(&server.url, "secret", encrypted).await;
    let (a, b) = (pair.a(), pair.b());
    let text_line = format!("the quick brown fox {marker} jumps over the lazy dog\n");
    write(a, &format!("{marker}.txt"), format!("note {marker}\n"));
    write(
        a,
        &format!("dir-{marker}/inner/small.txt"),
        text_line.as_bytes(),
    );
    write(
        a,
        &format!("dir-{marker}/big-text.txt"),
        text_line.repeat(40_000),
    );
    let mut big = seeded(1_500_000, 7);
    for at in [0usize, 700_000, 1_499_000] {
        big[at..at + marker.len()].copy_from_slice(marker.as_bytes());
    }
    write(a, "plain-name.bin", &big);
    std::fs::create_dir_all(a.join(format!("empty-{marker}"))).unwrap();
    // A symlink's target is the file's content too.
    std::os::unix::fs::symlink(format!("points-at-{marker}"), a.join("link")).unwrap();
    sync_ok(a, &server.url, "alice").await;
    sync_ok(b, &server.url, "bob").await;
    assert_eq!(tree(a), tree(b), "b did not get a's files");
    write(
        b,
        &format!("dir-{marker}/inner/small.txt"),
        format!("{text_line}edited on b: {marker}\n"),
    );
    write(b, &format!("from-b-{marker}.md"), text_line.repeat(3));
    sync_ok(b, &server.url, "bob").await;
    sync_ok(a, &server.url, "alice").await;
    assert_eq!(tree(a), tree(b), "a did not get b's edits");
    assert!(server.stop(), "the server did not stop cleanly");
    let spellings = spellings(&marker);
    let mut found = grep_tree(&store, &spellings);
    let log = server.log();
    for (name, s) in &spellings {
        if log.as_bytes().windows(s.len()).any(|w| w == s.as_slice()) {
            found.push(("the server's log".into(), name.clone()));
        }
    }
    drop(pair);
    found
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut v = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut v);
    v.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_in_names_and_contents_is_nowhere_on_the_server() {
    let found = marker_run(true).await;
    assert!(
        found.is_empty(),
        "the marker is on the server in the clear: {found:?}"
    );
}

/// Guards the grep: on a plain folder the same run finds the marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_grep_finds_a_plain_folders_names_and_contents() {
    let found = marker_run(false).await;
    assert!(
        found.iter().any(|(f, _)| f.contains("packs")),
        "the marker's contents not found in the packs: {found:?}"
    );
    assert!(
        found.iter().any(|(f, _)| !f.contains("packs")),
        "the marker's names not found in the index: {found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passphrase_is_a_clear_error_and_writes_nothing() {
    let server = Server::start().await;
    let pair = Pair::new(&server.url, "f", true).await;
    write(pair.a(), "doc.txt", "secret words");
    write(pair.a(), "sub/more.txt", "more");
    sync_ok(pair.a(), &server.url, "alice").await;

    let wrong = key_file(pair.keys.path(), "wrong", "not the passphrase");
    // An empty directory, and one holding a file of its own: neither changes.
    let empty = tempfile::tempdir().unwrap();
    let own = tempfile::tempdir().unwrap();
    write(own.path(), "mine.txt", "my own file");
    for dir in [empty.path(), own.path()] {
        let before = tree(dir);
        let out = init(dir, &server.url, "f", &wrong, false).await;
        let t = text(&out);
        assert!(!out.status.success(), "a wrong passphrase was taken: {t}");
        assert!(
            t.to_lowercase().contains("passphrase"),
            "the error does not say the passphrase is wrong: {t}"
        );
        assert_eq!(tree(dir), before, "files changed on a refused join: {t}");
        assert!(
            !dir.join(".lbsync").exists(),
            ".lbsync/ left behind by a refused join: {t}"
        );
        // A sync of the directory without the key cannot read the folder either.
        let out = run(args(&[
            "sync",
            dir.to_str().unwrap(),
            "--server",
            &server.url,
            "--folder",
            "f",
        ]))
        .await;
        assert!(
            !out.status.success(),
            "a directory without the key synced an encrypted folder: {}",
            text(&out)
        );
        assert_eq!(
            tree(dir),
            before,
            "a sync without the key wrote: {}",
            text(&out)
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passphrase_change_refuses_the_old_one_and_keeps_data_and_devices() {
    let server = Server::start().await;
    let pair = Pair::new(&server.url, "f", true).await;
    let (a, b) = (pair.a(), pair.b());
    write(a, "doc.txt", "version one");
    write(a, "big.bin", seeded(3 << 20, 11));
    sync_ok(a, &server.url, "alice").await;
    sync_ok(b, &server.url, "bob").await;
    assert_eq!(tree(a), tree(b));

    let new_key = key_file(pair.keys.path(), "new", "a brand new passphrase");
    let out = run_env(
        args(&[
            "passphrase",
            a.to_str().unwrap(),
            "--server",
            &server.url,
            "--key-file",
            new_key.to_str().unwrap(),
        ]),
        &FAST_KDF,
    )
    .await;
    assert!(out.status.success(), "passphrase change: {}", text(&out));

    // The old passphrase no longer opens the folder on a new device.
    let c = tempfile::tempdir().unwrap();
    let out = init(c.path(), &server.url, "f", &pair.key, false).await;
    assert!(
        !out.status.success(),
        "the old passphrase still works: {}",
        text(&out)
    );
    assert_eq!(contents(c.path()), (vec![], false), "{}", text(&out));
    // The new one does, and the data is intact.
    let d = tempfile::tempdir().unwrap();
    init_ok(d.path(), &server.url, "f", &new_key, false).await;
    sync_ok(d.path(), &server.url, "dave").await;
    assert_eq!(
        tree(d.path()),
        tree(a),
        "the data changed with the passphrase"
    );

    // A device joined before keeps syncing both ways.
    write(a, "doc.txt", "version two");
    sync_ok(a, &server.url, "alice").await;
    sync_ok(b, &server.url, "bob").await;
    assert_eq!(std::fs::read(b.join("doc.txt")).unwrap(), b"version two");
    write(b, "from-b.txt", "b still writes");
    sync_ok(b, &server.url, "bob").await;
    sync_ok(a, &server.url, "alice").await;
    sync_ok(d.path(), &server.url, "dave").await;
    assert_eq!(tree(a), tree(b));
    assert_eq!(tree(a), tree(d.path()));
    server.stop().await;
}
