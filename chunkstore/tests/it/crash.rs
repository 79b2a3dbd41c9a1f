//! Crash test: a child process inserts into a store and is killed with SIGKILL at random moments;
//! each time, the reopened store must pass fsck and hold every chunk whose insert had returned.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use lbsync_chunkstore::{Chunk, ChunkId, ChunkStore, PackStore, StoreOptions};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIR_VAR: &str = "LBSYNC_CRASH_STORE";
const SEED_VAR: &str = "LBSYNC_CRASH_SEED";

fn options() -> StoreOptions {
    StoreOptions {
        pack_target: 2 << 20,
        ..StoreOptions::default()
    }
}

/// The child: inserts random batches forever, printing each batch's ids once `insert_batch` has
/// returned. Run by `store_survives_kill_9_at_random_moments`, never on its own.
#[test]
#[ignore = "child process of store_survives_kill_9_at_random_moments"]
fn crash_child_writer() {
    let (Ok(dir), Ok(seed)) = (std::env::var(DIR_VAR), std::env::var(SEED_VAR)) else {
        panic!("run by store_survives_kill_9_at_random_moments with {DIR_VAR} and {SEED_VAR} set");
    };
    let store = PackStore::open_with(&dir, &options()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed.parse().unwrap());
    let mut out = std::io::stdout().lock();
    loop {
        let batch: Vec<Chunk> = (0..rng.random_range(1..48))
            .map(|_| {
                let mut data = vec![0u8; rng.random_range(1..64 << 10)];
                rng.fill_bytes(&mut data);
                if rng.random_bool(0.3) {
                    data.iter_mut().step_by(2).for_each(|b| *b = b'a');
                }
                Chunk::new(data)
            })
            .collect();
        store.insert_batch(&batch).unwrap();
        let ids: Vec<String> = batch.iter().map(|c| c.id().to_string()).collect();
        writeln!(out, "{}", ids.join(",")).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn store_survives_kill_9_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0xc4a54);
    let mut acknowledged: Vec<ChunkId> = Vec::new();
    for round in 0..20u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash::crash_child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "-q",
            ])
            .env(DIR_VAR, dir.path())
            .env(SEED_VAR, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a random number of acknowledged batches, while the next one is being written.
        let wait_for = rng.random_range(1..40);
        let mut seen = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(ids) = parse_ids(&line) {
                acknowledged.extend(ids);
                seen += 1;
                if seen == wait_for {
                    break;
                }
            }
        }
        child.kill().unwrap();
        // Whatever the child printed before it died was acknowledged too.
        for line in lines {
            match line {
                Ok(line) => acknowledged.extend(parse_ids(&line).unwrap_or_default()),
                Err(_) => break,
            }
        }
        child.wait().unwrap();

        let store = PackStore::open_with(dir.path(), &options()).unwrap();
        eprintln!("round {round}: {:?}", store.recovery());
        let report = store.fsck(false).unwrap();
        assert!(report.is_clean(), "round {round}: {:?}", report.problems);
        let missing = store.missing(&acknowledged).unwrap();
        assert!(
            missing.is_empty(),
            "round {round}: lost {} acknowledged chunks",
            missing.len()
        );
        for id in acknowledged.iter().rev().take(50) {
            let bytes = store.get(id).unwrap().expect("present");
            assert_eq!(ChunkId::of(&bytes), *id);
        }
    }
    assert!(
        acknowledged.len() > 100,
        "the child wrote too little to test anything"
    );
}

/// A complete line of ids; a line cut off by the kill is not one.
fn parse_ids(line: &str) -> Option<Vec<ChunkId>> {
    line.split(',').map(|s| s.parse().ok()).collect()
}
