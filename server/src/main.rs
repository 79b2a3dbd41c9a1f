//! `lbsync-server`: serves a store, or checks, collects or measures it (see [`lbsync_server::cli`]).

fn main() -> std::process::ExitCode {
    lbsync_server::cli::main(std::env::args_os())
}
