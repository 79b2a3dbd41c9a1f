//! lbsync's gRPC protocol (filled by the server issue).
