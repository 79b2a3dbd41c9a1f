//! The index written behind the packs: [`Indexer`].
//!
//! An insert returns once its records are synced in their pack, which is the truth; their index
//! entries reach sled a moment later, on a thread of their own, in the order the records were
//! written and with the pack's watermark in the same sled batch. Until then they wait in memory,
//! where reads find them. sled costs ~8 µs an entry on this machine (its nodes are copied on
//! write), about as much as receiving and hashing the chunk; behind the packs, that cost leaves
//! the upload's path.
//!
//! What survives a crash is unchanged: a crash loses at most entries not yet in sled, and opening
//! the store rescans each pack from its watermark, which never runs ahead of the entries before
//! it. Memory is bounded: an insert waits while [`MAX_PENDING`] entries are queued. If sled
//! fails (a full disk), the batch is retried until it goes in, and inserts fail with sled's error
//! meanwhile, so nothing is acknowledged that could not be indexed eventually.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::id::ChunkId;

use super::index::{IndexEntry, watermark_key};

/// Entries written to packs but not yet to sled, at most. At 8 KiB chunks that is about 1 GiB of
/// uploads, in about 20 MB of memory (each entry waits twice: in the map reads use, and in its
/// queued job).
pub(crate) const MAX_PENDING: usize = 128 * 1024;

/// How long a failed sled batch waits before it is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// What one append added to the index: its entries and the watermarks of the packs it wrote.
#[derive(Default)]
pub(crate) struct Appended {
    pub(crate) entries: Vec<(ChunkId, IndexEntry)>,
    pub(crate) watermarks: Vec<(u32, u64)>,
}

impl Appended {
    /// Adds it all to `batch`, watermarks after entries.
    pub(crate) fn add_to(&self, batch: &mut sled::Batch) {
        for (id, e) in &self.entries {
            batch.insert(id.as_bytes(), &e.encode());
        }
        for (pack, end) in &self.watermarks {
            batch.insert(&watermark_key(*pack), &end.to_le_bytes());
        }
    }
}

/// Writes index entries to sled behind the packs. See the module docs.
pub(crate) struct Indexer {
    shared: Arc<Shared>,
    jobs: Option<mpsc::Sender<Appended>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a job is done or fails.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    pending: HashMap<ChunkId, IndexEntry>,
    /// Jobs sent and not yet in sled.
    queued: usize,
    /// Why the oldest job cannot go into sled, while it cannot.
    failure: Option<sled::Error>,
    /// The store is closing: a job that fails is given up (the packs still hold it).
    closing: bool,
}

impl Indexer {
    /// Starts the thread that writes into `index`.
    pub(crate) fn start(index: sled::Tree) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("lbsync-index".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, &index, &rx)
            })?;
        Ok(Self {
            shared,
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// The entry of a chunk not yet in sled.
    pub(crate) fn get(&self, id: &ChunkId) -> Option<IndexEntry> {
        self.shared.lock().pending.get(id).copied()
    }

    /// Waits until there is room for more entries; sled's error if it is failing.
    pub(crate) fn reserve(&self) -> Result<()> {
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = &st.failure {
                return Err(Error::from(e.clone()));
            }
            if st.pending.len() < MAX_PENDING {
                return Ok(());
            }
            st = self.shared.wait(st);
        }
    }

    /// Queues what an append wrote.
    pub(crate) fn submit(&self, appended: Appended) {
        let Some(jobs) = &self.jobs else { return };
        let mut st = self.shared.lock();
        st.pending.extend(appended.entries.iter().copied());
        st.queued += 1;
        drop(st);
        // The thread lives as long as `jobs`; it only ends when this is dropped.
        let _ = jobs.send(appended);
    }

    /// Waits until everything queued is in sled (before walking or rewriting the index).
    pub(crate) fn settle(&self) -> Result<()> {
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = &st.failure {
                return Err(Error::from(e.clone()));
            }
            if st.queued == 0 {
                return Ok(());
            }
            st = self.shared.wait(st);
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything that can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }
}

fn run(shared: &Shared, index: &sled::Tree, jobs: &mpsc::Receiver<Appended>) {
    while let Ok(job) = jobs.recv() {
        loop {
            let mut batch = sled::Batch::default();
            job.add_to(&mut batch);
            let res = index.apply_batch(batch);
            let mut st = shared.lock();
            match res {
                Ok(()) => {
                    for (id, _) in &job.entries {
                        st.pending.remove(id);
                    }
                    st.queued -= 1;
                    st.failure = None;
                    shared.changed.notify_all();
                    break;
                }
                Err(e) => {
                    st.failure = Some(e);
                    shared.changed.notify_all();
                    if st.closing {
                        // Given up: the records are in their pack past its watermark, and the
                        // next open indexes them again.
                        break;
                    }
                    drop(st);
                    std::thread::sleep(RETRY);
                }
            }
        }
    }
}
