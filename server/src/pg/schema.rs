//! The schema's migrations: `server/migrations/V<n>__<name>.sql`, embedded, run by refinery.

use crate::error::{Error, Result};

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The session advisory lock held while migrating ("lbsync" and 1). refinery takes no lock of
/// its own: two servers starting at once on a fresh database would both create its table and
/// apply V1. Under this lock the second waits, then finds V1 applied and does nothing.
const MIGRATION_LOCK: i64 = 0x6c62_7379_6e63_0001;

/// Brings the database's schema up to this version, one server at a time.
pub(super) fn migrate(client: &mut postgres::Client, target: &str) -> Result<()> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::Database(format!(
            "PostgreSQL at {target}: {what} failed ({e}): the user needs the right to create \
             tables in the database; see `{}`",
            "server/migrations"
        ))
    };
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(|e| fail("taking the migration lock", &super::describe(&e)))?;
    let report = embedded::migrations::runner().run(client);
    // Closing the session would release it too; a pooled session would not be closed.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    let report = report.map_err(|e| fail("migrating the schema", &e))?;
    unlocked.map_err(|e| fail("releasing the migration lock", &super::describe(&e)))?;
    for m in report.applied_migrations() {
        tracing::info!(
            "PostgreSQL at {target}: applied migration V{}__{}",
            m.version(),
            m.name()
        );
    }
    Ok(())
}
