//! End-to-end tests of the server: in-process over real sockets, and the real binary.

mod cli;
mod rpc;
mod util;
