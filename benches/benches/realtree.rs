//! Bytes on the wire for a real source tree: two adjacent releases of Django (5.1.3 and 5.1.4,
//! 6,806 files, 71 MB, the source archives from PyPI, cached under `~/.cache/lbsync-bench` or
//! `$LBSYNC_BENCH_CACHE`), counted at the socket for both lbsync clients, beside rsync and
//! rsync -z through a local daemon when rsync is installed:
//!
//! - the first upload of the tree, and the second device's first download;
//! - the patch release applied as `git checkout` would: only the changed files are written;
//! - the patch release unpacked over the old one (as tar would): every file is rewritten with
//!   the archive's mtime, few change content; the receiver should rewrite only those.
//!
//! Without the archives (no network and no cache) it says so and measures nothing.

#![allow(clippy::print_stdout, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use lbsync_benches::rsync::Rsync;
use lbsync_benches::{BenchServer, CountingProxy, machine, quick, runtime, sync, table};
use lbsync_chunkstore::ChunkParams;

const PROJECT: &str = "Django";
const OLD: &str = "5.1.3";
const NEW: &str = "5.1.4";

fn main() {
    runtime().block_on(run());
}

fn cache_dir() -> PathBuf {
    std::env::var_os("LBSYNC_BENCH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/lbsync-bench")
        })
}

/// The source archive of `PROJECT` `version`, downloaded once from PyPI's simple index (the
/// sha256 it names is checked); None when it cannot be had.
fn archive(version: &str) -> Option<PathBuf> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let file = dir.join(format!("{PROJECT}-{version}.tar.gz"));
    if file.exists() {
        return Some(file);
    }
    let script = r##"
import hashlib, re, sys, urllib.request
project, version, out = sys.argv[1:4]
index = urllib.request.urlopen(f"https://pypi.org/simple/{project.lower()}/", timeout=60).read().decode()
for href, name in re.findall(r'href="([^"]+)"[^>]*>([^<]+)<', index):
    if name.lower() == f"{project}-{version}.tar.gz".lower():
        url, _, digest = href.partition("#sha256=")
        data = urllib.request.urlopen(url, timeout=300).read()
        if digest and hashlib.sha256(data).hexdigest() != digest:
            sys.exit(f"{name}: sha256 mismatch")
        open(out + ".part", "wb").write(data)
        break
else:
    sys.exit(f"{project} {version}: no source archive on PyPI")
"##;
    let ok = Command::new("python3")
        .args(["-c", script, PROJECT, version])
        .arg(&file)
        .status()
        .ok()?
        .success();
    let part = file.with_extension("gz.part");
    (ok && std::fs::rename(&part, &file).is_ok()).then_some(file)
}

/// Unpacks `archive` into a new `dir` (its top directory stripped). In quick mode only `docs/`
/// is kept (about 500 files; the releases differ there too).
fn unpack(archive: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let ok = Command::new("tar")
        .args(["xzf"])
        .arg(archive)
        .args(["--strip-components=1", "-C"])
        .arg(dir)
        .status()
        .expect("run tar")
        .success();
    assert!(ok, "tar failed on {}", archive.display());
    if quick() {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            if e.file_name() != "docs" {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
}

/// Writes every file of `release` over `dir`, with the release's mtime, as `tar x` of its
/// archive would; files not in it stay.
fn unpack_over(release: &Path, dir: &Path) {
    for (rel, m) in files(release) {
        let path = dir.join(&rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, std::fs::read(release.join(&rel)).expect("read")).expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(m.modified().expect("mtime"))
            .expect("set mtime");
    }
}

/// Every regular file under `dir` (but `.lbsync/`), by relative path.
fn files(dir: &Path) -> BTreeMap<PathBuf, std::fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).expect("stat");
            if m.is_dir() {
                if e.file_name() != ".lbsync" {
                    stack.push(p);
                }
            } else if m.is_file() {
                out.insert(p.strip_prefix(dir).expect("under dir").to_path_buf(), m);
            }
        }
    }
    out
}

/// Makes `dir` (at release `from`) hold release `to` as `git checkout` would: files whose
/// bytes differ are rewritten, new ones created, vanished ones deleted, the rest untouched.
/// Returns how many files were written or deleted.
fn apply_as_git(dir: &Path, from: &Path, to: &Path) -> usize {
    let (old, new) = (files(from), files(to));
    let mut touched = 0;
    for rel in new.keys() {
        let bytes = std::fs::read(to.join(rel)).expect("read");
        if old.contains_key(rel) && std::fs::read(from.join(rel)).expect("read") == bytes {
            continue;
        }
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
        touched += 1;
    }
    for rel in old.keys().filter(|r| !new.contains_key(*r)) {
        std::fs::remove_file(dir.join(rel)).expect("remove");
        touched += 1;
    }
    touched
}

/// The inode of every file: a file written through a temp file and a rename gets a new one.
fn identities(dir: &Path) -> HashMap<PathBuf, u64> {
    files(dir).into_iter().map(|(p, m)| (p, m.ino())).collect()
}

/// How many files of `after` were not there, or are another inode, than in `before`.
fn rewritten(before: &HashMap<PathBuf, u64>, after: &HashMap<PathBuf, u64>) -> usize {
    after
        .iter()
        .filter(|(p, ino)| before.get(*p) != Some(ino))
        .count()
}

/// Syncs the uploading folder `a`, then the receiving `b`: each client's bytes at the socket
/// (sent, received), and how many of `b`'s files were written.
async fn sync_both(
    a: &Path,
    b: &Path,
    url: &str,
    proxy: &CountingProxy,
) -> ((u64, u64), (u64, u64), usize) {
    let before = identities(b);
    sync(a, url, "a", "tree").await;
    let up = proxy.take();
    sync(b, url, "b", "tree").await;
    let down = proxy.take();
    (up, down, rewritten(&before, &identities(b)))
}

fn kb(b: u64) -> String {
    if b < 10_000 {
        format!("{b} B")
    } else {
        format!("{:.1} KB", b as f64 / 1000.0)
    }
}

struct Row {
    workload: &'static str,
    up: (u64, u64),
    down: (u64, u64),
    rewrote: String,
    rsync: Option<((u64, u64), (u64, u64))>,
    target: String,
}

async fn run() {
    println!("# bytes on the wire for a real source tree — {}", machine());
    let (Some(old_tar), Some(new_tar)) = (archive(OLD), archive(NEW)) else {
        println!(
            "\nskipped: the {PROJECT} {OLD} and {NEW} source archives are neither in {} nor \
             downloadable from PyPI",
            cache_dir().display()
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (old_tree, new_tree) = (tmp.path().join("old"), tmp.path().join("new"));
    unpack(&old_tar, &old_tree);
    unpack(&new_tar, &new_tree);
    let n = files(&old_tree).len();
    let bytes: u64 = files(&old_tree).values().map(|m| m.len()).sum();
    println!(
        "\n{PROJECT} {OLD} -> {NEW}: {n} files, {:.1} MB (sdists from PyPI{})\n",
        bytes as f64 / 1e6,
        if quick() {
            ", docs/ only: quick mode"
        } else {
            ""
        }
    );

    let server = BenchServer::start(&tmp.path().join("store"), ChunkParams::DEFAULT).await;
    let proxy = CountingProxy::start(server.addr).await.expect("proxy");
    let rsync = Rsync::start(tmp.path());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&b).expect("mkdir");
    let url = proxy.url.clone();
    let mut rows = Vec::new();
    let rsync_both = |src: &Path| {
        rsync
            .as_ref()
            .map(|r| (r.push(src, "plain", false), r.push(src, "z", true)))
    };

    // First upload and first download.
    unpack_over(&old_tree, &a);
    proxy.take();
    let (up, down, wrote) = sync_both(&a, &b, &url, &proxy).await;
    let rs = rsync_both(&a);
    rows.push(Row {
        workload: "first upload, first download",
        up,
        down,
        rewrote: format!("{wrote} (all new)"),
        target: match rs {
            Some((_, z)) => format!("upload ≤ rsync -z ({})", kb(z.0 + z.1)),
            None => "upload ≤ rsync -z".into(),
        },
        rsync: rs,
    });

    // The patch release as git would apply it.
    let touched = apply_as_git(&a, &old_tree, &new_tree);
    let (up, down, wrote) = sync_both(&a, &b, &url, &proxy).await;
    rows.push(Row {
        workload: "patch release as git applies it",
        up,
        down,
        rewrote: format!("{wrote} ({touched} changed)"),
        rsync: rsync_both(&a),
        target: "≤ 40 KB both ways".into(),
    });

    // Back to the old release as git would (not counted), then the new one unpacked over it:
    // every mtime changes, few contents do.
    apply_as_git(&a, &new_tree, &old_tree);
    sync(&a, &url, "a", "tree").await;
    sync(&b, &url, "b", "tree").await;
    let _ = rsync_both(&a);
    proxy.take();
    unpack_over(&new_tree, &a);
    let (up, down, wrote) = sync_both(&a, &b, &url, &proxy).await;
    rows.push(Row {
        workload: "patch release unpacked over it (tar)",
        up,
        down,
        rewrote: format!("{wrote} ({touched} changed)"),
        rsync: rsync_both(&a),
        target: "≤ 300 KB both ways, rewrite only the changed".into(),
    });
    server.stop().await;

    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            let (rs, rz) = match r.rsync {
                Some((p, z)) => (kb(p.0 + p.1), kb(z.0 + z.1)),
                None => ("-".into(), "-".into()),
            };
            vec![
                r.workload.into(),
                kb(r.up.0 + r.up.1),
                kb(r.down.0 + r.down.1),
                kb(r.up.0 + r.up.1 + r.down.0 + r.down.1),
                r.rewrote,
                rs,
                rz,
                r.target,
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "workload",
                "uploading client",
                "receiving client",
                "both",
                "receiver wrote",
                "rsync",
                "rsync -z",
                "target",
            ],
            &rows
        )
    );
    if rsync.is_none() {
        println!("(rsync is not installed: `apt-get install rsync` to fill its columns)");
    }
}
