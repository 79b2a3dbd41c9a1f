//! End-to-end tests of the client: in-process syncers and the real binary, against a real server
//! on 127.0.0.1.

mod access;
mod cli;
mod cluster;
mod conventions;
mod encrypted;
mod encryption;
mod expiry;
mod faults;
mod hostile;
mod hostile_proxy;
mod metadata;
mod model;
mod procs;
mod python;
mod safety;
mod sync;
mod tls;
mod util;
mod watch;
