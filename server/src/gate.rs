//! How many requests of one principal the server works on at once.
//!
//! tower's `ConcurrencyLimit` bounds a whole service (the server sets it per connection); a
//! client can open many connections, so the per-user bound is a semaphore keyed by principal.
//! Requests past it wait their turn rather than fail: an honest client with many files in flight
//! is slowed, never refused. A turn is held only while the server works (a unary request, one
//! PutChunks message, one GetChunks message), never while it waits for the client, so clients
//! sharing a token cannot starve each other by holding turns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-principal semaphores; clones share them.
#[derive(Clone, Debug)]
pub(crate) struct Gates {
    per_principal: usize,
    gates: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Gates {
    /// At most `per_principal` turns at once for each principal.
    pub(crate) fn new(per_principal: u32) -> Self {
        Self {
            per_principal: per_principal.max(1) as usize,
            gates: Arc::default(),
        }
    }

    fn gate(&self, who: &str) -> Arc<Semaphore> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry(who.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_principal)))
            .clone()
    }

    /// Waits for a turn of `who`'s; the turn ends when the permit is dropped.
    pub(crate) async fn enter(&self, who: &str) -> OwnedSemaphorePermit {
        self.gate(who)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// [`Gates::enter`] from a blocking thread.
    pub(crate) fn enter_blocking(&self, who: &str) -> OwnedSemaphorePermit {
        let gate = self.gate(who);
        tokio::runtime::Handle::current()
            .block_on(gate.acquire_owned())
            .expect("the semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_bounded_per_principal() {
        let g = Gates::new(2);
        let a1 = g.enter("a").await;
        let _a2 = g.enter("a").await;
        // A third turn of a's waits; b's does not.
        let _b = g.enter("b").await;
        let g2 = g.clone();
        let third = tokio::spawn(async move { g2.enter("a").await });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(a1);
        drop(third.await.unwrap());
    }
}
