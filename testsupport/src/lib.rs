//! What lbsync's tests share. For now that is [`services`]: the PostgreSQL server and the S3 store
//! (Garage) that `scripts/dev-cluster start DIR` runs, and that CI always runs (issue 18).
//!
//! A test asks for a service and gets its own corner of it, or `None` when the service is not
//! configured (the test then returns early, after saying why on stderr). In CI (`CI=true`) a
//! missing service is a failure instead, so that nothing is skipped there unnoticed.
//!
//! ```no_run
//! use lbsync_testsupport::services;
//!
//! let Some(pg) = services::postgres("commit_conflict") else { return };
//! let Some(s3) = services::s3("commit_conflict") else { return };
//! // pg.url: postgres://.../t_commit_conflict_<random>, a database of its own, dropped with `pg`.
//! // s3.url: s3://lbsync/store/t-<random>?endpoint=..., a prefix no other test writes under.
//! # let _ = (&pg.url, &s3.url);
//! ```

pub mod services;
