//! Integration tests of lbsync-objstore: the chunk store contract against a real S3 store.

mod s3;
mod throughput;
