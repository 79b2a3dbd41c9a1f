//! Work that one server at a time may do on a shared store: a session advisory lock of
//! PostgreSQL, held on one pooled connection while the work runs, and released (or dropped with
//! the connection, if the server dies) after it.

use super::PgMeta;
use crate::error::{Error, Result};

/// The lock under which a server opens the object store, creating it if it is empty: servers
/// starting at once on an empty prefix then agree on one store id.
pub const STORE_CREATE_LOCK: i64 = 0x6c62_7379_6e63_0002;
/// The lock of a collection (`gc`): one at a time over a shared store.
pub const GC_LOCK: i64 = 0x6c62_7379_6e63_0003;

impl PgMeta {
    /// Runs `work` holding the advisory lock `key`, waiting for it if another server holds it.
    pub fn exclusive<T>(&self, key: i64, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let db = &self.db;
        let mut conn = db.conn()?;
        conn.execute("SELECT pg_advisory_lock($1)", &[&key])
            .map_err(db.fail("taking an advisory lock"))?;
        let out = work();
        conn.execute("SELECT pg_advisory_unlock($1)", &[&key])
            .map_err(db.fail("releasing an advisory lock"))?;
        out
    }

    /// Runs `work` holding the advisory lock `key` if no other server holds it; otherwise
    /// returns `Ok(None)` at once.
    pub fn if_free<T>(&self, key: i64, work: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        let db = &self.db;
        let mut conn = db.conn()?;
        let got: bool = conn
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .map_err(db.fail("taking an advisory lock"))?
            .get(0);
        if !got {
            return Ok(None);
        }
        let out = work();
        conn.execute("SELECT pg_advisory_unlock($1)", &[&key])
            .map_err(db.fail("releasing an advisory lock"))?;
        out.map(Some)
    }
}

/// The error of a collection that found another one running.
pub fn gc_running() -> Error {
    Error::Aborted(
        "another server is collecting this store's garbage (gc runs one at a time): try again \
         when it is done"
            .into(),
    )
}
