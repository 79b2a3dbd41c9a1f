//! lbsync client library (filled by its issue).
