//! Faults: the server or a client killed with SIGKILL at random moments, and many writers at once.
//! Each test checks that nothing anyone wrote is lost, that no partial file ever shows at a synced
//! path, and that every folder converges.
//!
//! Seeded from `LBSYNC_TEST_SEED` (else the clock; the seed is printed). `LBSYNC_LONG_TESTS=1`
//! runs longer variants.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::procs::{CLIENT_BIN, ServerProc, Watcher};
use crate::util::*;

fn long() -> bool {
    std::env::var_os("LBSYNC_LONG_TESTS").is_some()
}

fn rng(test: &str) -> ChaCha8Rng {
    let seed = std::env::var("LBSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: LBSYNC_TEST_SEED={seed}");
    ChaCha8Rng::seed_from_u64(seed)
}

/// Polls `cond` every 50 ms for up to `secs` seconds; on timeout panics with `explain()`.
fn wait_for(secs: u64, mut cond: impl FnMut() -> bool, explain: impl FnOnce() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {secs}s: {}", explain());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log, for failure reports.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Copies the logs under `tmp` (servers', watchers') and each folder's sync state to a directory
/// that outlives the test, and returns it: a failure report names it.
fn keep_logs(tmp: &Path, test: &str) -> PathBuf {
    let keep = std::env::temp_dir().join(format!("lbsync-{test}-{}", std::process::id()));
    fs::create_dir_all(&keep).unwrap();
    for e in fs::read_dir(tmp).unwrap().flatten() {
        let (path, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
        if name.ends_with(".log") {
            let _ = fs::copy(&path, keep.join(&name));
        }
        for file in ["state.db", "state.db-wal"] {
            let state = path.join(".lbsync").join(file);
            if state.exists() {
                let _ = fs::copy(&state, keep.join(format!("{name}.{file}")));
            }
        }
    }
    keep
}

/// What differs between two trees, briefly.
fn tree_diff(a: &Path, b: &Path) -> String {
    let (ta, tb) = (tree(a), tree(b));
    let keys: BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    keys.into_iter()
        .filter(|k| ta.get(*k) != tb.get(*k))
        .take(20)
        .map(|k| format!("{k}: {:?} vs {:?}", ta.get(k), tb.get(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lines of a file and of all its conflicted copies, under `dir`.
fn lines_with_copies(dir: &Path, name: &str) -> BTreeSet<String> {
    let stem = name.trim_end_matches(".txt");
    let mut out = BTreeSet::new();
    for (rel, node) in tree(dir) {
        let base = rel.split('/').next_back().unwrap_or(&rel);
        let is_it = base == name || (base.starts_with(&format!("{stem} (conflicted copy ")));
        if is_it && matches!(node, Node::File { .. }) {
            let text = fs::read_to_string(dir.join(&rel)).unwrap_or_default();
            out.extend(text.lines().map(str::to_owned));
        }
    }
    out
}

/// Appends a line to a file, as a person's editor would save an edit.
fn append(path: &Path, line: &str) {
    use std::io::Write;
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// One of the two writers of the server crash loop: it owns the files under `<name>/` (creates,
/// edits, renames, deletes them, and rewrites a 50 MiB file now and then) and appends lines to
/// shared files that the other writer appends to as well.
struct Writer {
    name: &'static str,
    dir: PathBuf,
    /// What each owned file must end up holding (path → content).
    owned: BTreeMap<String, Vec<u8>>,
    /// Every line appended to each shared file.
    shared: BTreeMap<String, BTreeSet<String>>,
}

const SHARED: [&str; 3] = ["shared/s0.txt", "shared/s1.txt", "shared/s2.txt"];

impl Writer {
    fn new(name: &'static str, dir: PathBuf) -> Self {
        Self {
            name,
            dir,
            owned: BTreeMap::new(),
            shared: BTreeMap::new(),
        }
    }

    fn put(&mut self, rel: String, data: Vec<u8>) {
        write(&self.dir, &rel, &data);
        self.owned.insert(rel, data);
    }

    fn step(&mut self, round: usize, rng: &mut ChaCha8Rng) {
        let n = self.name;
        self.put(
            format!("{n}/new-{round}.txt"),
            format!("{n} created this in round {round}").into_bytes(),
        );
        let small: Vec<String> = self
            .owned
            .keys()
            .filter(|k| k.ends_with(".txt"))
            .cloned()
            .collect();
        let pick = |rng: &mut ChaCha8Rng| small[rng.random_range(0..small.len())].clone();
        let edited = pick(rng);
        self.put(
            edited.clone(),
            format!("{n} edited {edited} in round {round}").into_bytes(),
        );
        if small.len() > 4 {
            let gone = pick(rng);
            if gone != edited {
                fs::remove_file(self.dir.join(&gone)).unwrap();
                self.owned.remove(&gone);
            }
        }
        if let Some(from) = small
            .iter()
            .find(|k| self.owned.contains_key(*k) && **k != edited)
        {
            let to = format!("{n}/renamed-{round}.txt");
            fs::rename(self.dir.join(from), self.dir.join(&to)).unwrap();
            let data = self.owned.remove(from).unwrap();
            self.owned.insert(to, data);
        }
        let s = SHARED[rng.random_range(0..SHARED.len())];
        let line = format!("{n} appended in round {round}");
        append(&self.dir.join(s), &line);
        self.shared.entry(s.to_owned()).or_default().insert(line);
        let big_round = if n == "A" { 0 } else { 2 };
        if round % 5 == big_round {
            let seed = rng.random();
            self.put(format!("{n}/big.bin"), seeded(50 << 20, seed));
        }
    }

    /// What is missing or wrong in `dir` compared with what this writer wrote.
    fn check(&self, dir: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        let n = self.name;
        for (rel, want) in &self.owned {
            match fs::read(dir.join(rel)) {
                Ok(got) if &got == want => {}
                Ok(got) => {
                    problems.push(format!("{rel}: {} bytes, not {n}'s last write", got.len()))
                }
                Err(e) => problems.push(format!("{rel}: {e}")),
            }
        }
        for (rel, node) in tree(dir) {
            let mine = rel.starts_with(&format!("{n}/"));
            if mine && matches!(node, Node::File { .. }) && !self.owned.contains_key(&rel) {
                problems.push(format!("{rel}: {n} deleted or renamed it, yet it is there"));
            }
        }
        for (s, lines) in &self.shared {
            let have = lines_with_copies(&dir.join("shared"), s.trim_start_matches("shared/"));
            for l in lines.difference(&have) {
                problems.push(format!("{s}: lost the line {l:?}"));
            }
        }
        problems
    }
}

/// Two `watch` clients write, edit, rename and delete files, small and 50 MiB, while the server
/// is SIGKILLed at random moments and restarted on the same store. In the end both folders are
/// equal, every write either client made is there (at its path, or for the shared files as a
/// conflicted copy), and fsck finds the store clean.
#[test]
fn server_killed_at_random_loses_nothing() {
    let mut rng = rng("server_killed_at_random_loses_nothing");
    let rounds = if long() { 60 } else { 20 };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let mut server = ServerProc::start(&tmp.path().join("store"));
    let wa = Watcher::start(&a, &server.url, "A");
    let wb = Watcher::start(&b, &server.url, "B");
    let mut writers = [Writer::new("A", a.clone()), Writer::new("B", b.clone())];
    let start = Instant::now();
    for round in 0..rounds {
        for w in &mut writers {
            w.step(round, &mut rng);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        server.kill9();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        server.restart();
    }
    eprintln!(
        "{rounds} rounds of writes and SIGKILLs in {:?}",
        start.elapsed()
    );
    let explain = || {
        format!(
            "logs and states kept in {}\ndiff:\n{}\nA: {:?}\nB: {:?}\nA's log:\n{}\nB's log:\n{}",
            keep_logs(tmp.path(), "server_killed").display(),
            tree_diff(&a, &b),
            writers.iter().flat_map(|w| w.check(&a)).collect::<Vec<_>>(),
            writers.iter().flat_map(|w| w.check(&b)).collect::<Vec<_>>(),
            tail(&wa.log()),
            tail(&wb.log())
        )
    };
    wait_for(
        240,
        || tree(&a) == tree(&b) && writers.iter().all(|w| w.check(&a).is_empty()),
        explain,
    );
    eprintln!("converged {:?} after the first round", start.elapsed());
    assert!(wa.stop() && wb.stop(), "the watchers exit 0 on SIGTERM");
    assert!(server.stop(), "{}", server.log());
    let (report, clean) = server.fsck();
    assert!(clean, "fsck after {rounds} SIGKILLs: {report}");
}

/// Eight `watch` clients append lines to an overlapping set of 50 files for a while. In the end
/// all eight folders are equal and every line appended anywhere is in the file or in one of its
/// conflicted copies: no update was silently lost.
#[test]
fn eight_concurrent_writers_lose_no_update() {
    let mut rng = rng("eight_concurrent_writers_lose_no_update");
    let secs = if long() { 60 } else { 8 };
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProc::start(&tmp.path().join("store"));
    let dirs: Vec<PathBuf> = (0..8).map(|i| tmp.path().join(format!("c{i}"))).collect();
    let watchers: Vec<Watcher> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            fs::create_dir_all(d).unwrap();
            Watcher::start(d, &server.url, &format!("W{i}"))
        })
        .collect();
    let seeds: Vec<u64> = (0..8).map(|_| rng.random()).collect();
    let threads: Vec<_> = dirs
        .iter()
        .cloned()
        .zip(seeds)
        .enumerate()
        .map(|(i, (dir, seed))| {
            std::thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut written: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                let end = Instant::now() + Duration::from_secs(secs);
                let mut k = 0;
                while Instant::now() < end {
                    let f = format!("f{:02}.txt", rng.random_range(0..50));
                    let line = format!("W{i} edit {k}");
                    append(&dir.join(&f), &line);
                    written.entry(f).or_default().insert(line);
                    k += 1;
                    std::thread::sleep(Duration::from_millis(rng.random_range(10..120)));
                }
                written
            })
        })
        .collect();
    let mut written: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in threads {
        for (f, lines) in t.join().unwrap() {
            written.entry(f).or_default().extend(lines);
        }
    }
    let edits: usize = written.values().map(BTreeSet::len).sum();
    wait_for(
        240,
        || {
            let first = tree(&dirs[0]);
            dirs[1..].iter().all(|d| tree(d) == first)
        },
        || {
            let lagging: Vec<String> = dirs[1..]
                .iter()
                .zip(&watchers[1..])
                .filter(|(d, _)| tree(d) != tree(&dirs[0]))
                .map(|(d, w)| {
                    let diff = tree_diff(&dirs[0], d);
                    format!("{}:\n{diff}\nits log:\n{}", d.display(), tail(&w.log()))
                })
                .collect();
            format!(
                "{edits} edits; these differ from c0:\n{}\nc0's log:\n{}",
                lagging.join("\n"),
                tail(&watchers[0].log())
            )
        },
    );
    let mut lost = Vec::new();
    for (f, lines) in &written {
        let have = lines_with_copies(&dirs[0], f);
        lost.extend(lines.difference(&have).map(|l| format!("{f}: {l}")));
    }
    let copies = tree(&dirs[0])
        .keys()
        .filter(|k| k.contains("(conflicted copy "))
        .count();
    eprintln!("{edits} edits by 8 writers; {copies} conflicted copies; all folders equal");
    if !lost.is_empty() {
        // What each watcher said about the files that lost a line.
        let files: BTreeSet<&str> = lost.iter().filter_map(|l| l.split(':').next()).collect();
        for (i, w) in watchers.iter().enumerate() {
            let log = w.log();
            let said: Vec<&str> = log
                .lines()
                .filter(|l| files.iter().any(|f| l.contains(&f[..f.len() - 4])))
                .collect();
            eprintln!("c{i} on {files:?}:\n{}", said.join("\n"));
        }
    }
    assert!(lost.is_empty(), "lost updates: {lost:?}");
    for w in watchers {
        assert!(w.stop(), "the watchers exit 0 on SIGTERM");
    }
    assert!(server.stop(), "{}", server.log());
}

/// `lbsync-client sync`, SIGKILLed again and again in the middle of uploads and downloads of
/// 40 MiB files: the source is never touched, no partial file ever shows at a synced path, and
/// the next syncs converge with everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_during_transfers_loses_nothing() {
    let mut rng = rng("client_killed_during_transfers_loses_nothing");
    let rounds = if long() { 12 } else { 4 };
    let server = Server::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    let spawn = |dir: &Path, dev: &str| {
        Command::new(CLIENT_BIN)
            .args([
                "sync",
                dir.to_str().unwrap(),
                "--server",
                &server.url,
                "--device",
                dev,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Every content each path ever had: what a reader may see there.
    let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut latest: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for round in 0..rounds {
        let name = format!("big{}.bin", round % 2);
        let data = seeded(40 << 20, rng.random());
        write(a, &name, &data);
        versions
            .entry(name.clone())
            .or_default()
            .insert(blake3::hash(&data).to_hex().to_string());
        latest.insert(name.clone(), data);

        // Kill the upload once part of it is stored (or it finished), plus a random moment.
        let stored = stored_bytes(&server);
        let mut up = spawn(a, "a");
        until(60, "part of the upload", || {
            stored_bytes(&server) > stored + (4 << 20) || up.try_wait().unwrap().is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        up.kill().unwrap();
        up.wait().unwrap();
        for (p, want) in &latest {
            assert_eq!(
                &fs::read(a.join(p)).unwrap(),
                want,
                "the source {p} is untouched"
            );
        }
        // Make sure the server has it, then kill b's download once a part file exists.
        assert!(sync(a, &server, "a").await.in_sync());
        // The last round's part file (left by the kill) must not count as this round's.
        let tmp = b.join(".lbsync/tmp");
        if let Ok(d) = fs::read_dir(&tmp) {
            d.flatten().for_each(|e| fs::remove_file(e.path()).unwrap());
        }
        let mut down = spawn(b, "b");
        until(60, "part of the download", || {
            fs::read_dir(&tmp).is_ok_and(|d| d.count() > 0) || down.try_wait().unwrap().is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        down.kill().unwrap();
        down.wait().unwrap();
        for (p, node) in tree(b) {
            if let Node::File { hash, .. } = node {
                assert!(
                    versions.get(&p).is_some_and(|v| v.contains(&hash)),
                    "round {round}: {p} in b is not a version anyone wrote (a partial file?)"
                );
            }
        }
    }
    converge(&[a, b], &server).await;
    assert_eq!(tree(a), tree(b));
    for (p, want) in &latest {
        assert_eq!(&fs::read(b.join(p)).unwrap(), want, "{p} arrived whole");
    }
    server.stop().await;
}
