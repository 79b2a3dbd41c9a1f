//! Integration tests of the chunk store through its public API.

mod crash;
mod protocol_doc;
