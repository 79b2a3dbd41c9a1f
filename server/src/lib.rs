//! lbsync server library (filled by its issue).
