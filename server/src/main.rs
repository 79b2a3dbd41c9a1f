//! `lbsync-server`: serves a store, or checks, collects or measures it (see [`lbsync_server::cli`]).

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    lbsync_server::cli::main(std::env::args_os())
}
