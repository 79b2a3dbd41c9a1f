//! The bridge from the synchronous [`lbsync_chunkstore::ChunkStore`] to async object_store.
//!
//! The store owns a small multi-thread tokio runtime (two workers, its own threads). A sync
//! method builds a `'static` future (it owns clones of what it needs), spawns it on that runtime
//! and waits for the answer on a std channel. Waiting on a std channel never checks which
//! runtime, if any, the calling thread belongs to, so a call never panics with "cannot start a
//! runtime from within a runtime": not from a `spawn_blocking` thread of the server's runtime
//! (the intended caller), not from a plain thread, and not even from an async task of another
//! runtime, where it only blocks that task's worker while it waits (do not do that on purpose).
//! `Runtime::block_on` and `Handle::block_on` would panic in that last case.
//!
//! The runtime is shut down in the background when the store is dropped, which is allowed in an
//! async context too (dropping a `Runtime` there would panic). A future must not call back into
//! the store's sync methods: it would wait on its own runtime.

use std::future::Future;
use std::sync::mpsc;

use crate::error::{Error, Result};

/// A runtime and the way to run futures on it from synchronous code.
pub(crate) struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    /// Starts the runtime's two worker threads.
    pub(crate) fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lbsync-objstore")
            .enable_all()
            .build()
            .map_err(|e| Error::Runtime(format!("cannot start its threads: {e}")))?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `fut` on the store's runtime and waits for its answer.
    pub(crate) fn run<T, F>(&self, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle().spawn(async move {
            // The receiver waits until this is sent; if it went away, nobody needs the answer.
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| {
            Error::Runtime(
                "a request to the object store stopped before it answered (it panicked, or the \
                 store is shutting down)"
                    .into(),
            )
        })?
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime is only taken by drop")
            .handle()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_plain_threads_and_reports_panics() {
        let bridge = Bridge::new().unwrap();
        assert_eq!(bridge.run(async { Ok(7) }).unwrap(), 7);
        let err = bridge
            .run::<(), _>(async { panic!("boom") })
            .unwrap_err()
            .to_string();
        assert!(err.contains("stopped before it answered"), "{err}");
    }

    #[test]
    fn runs_from_a_spawn_blocking_thread_and_from_async_code_of_another_runtime() {
        let outer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bridge = std::sync::Arc::new(Bridge::new().unwrap());
        let b = bridge.clone();
        let got = outer.block_on(async move {
            let from_blocking = tokio::task::spawn_blocking({
                let b = b.clone();
                move || b.run(async { Ok(1) })
            })
            .await
            .unwrap()
            .unwrap();
            // Straight from an async task: blocks this worker, but does not panic.
            let from_async = b.run(async { Ok(2) }).unwrap();
            // Dropping a store's runtime inside an async context must not panic either.
            let own = Bridge::new().unwrap();
            assert_eq!(own.run(async { Ok(0) }).unwrap(), 0);
            drop(own);
            from_blocking + from_async
        });
        assert_eq!(got, 3);
        drop(bridge);
    }
}
