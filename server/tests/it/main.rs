//! End-to-end tests of the server: in-process over real sockets, and the real binary.

mod cli;
mod conventions;
mod disk_full;
mod encrypted;
mod hostile;
mod meta;
mod ops;
mod ops_cli;
mod rpc;
mod users;
mod util;
