//! `lbsync-client`: syncs a directory with a folder on an lbsync server.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lbsync_client::local::{fingerprint, scan, unchanged};
use lbsync_client::state::StateStore;
use lbsync_client::{SyncOptions, Syncer};
use lbsync_proto::{CommitOutcome, SyncPath};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `println!` that ends the program quietly when standard output is gone (`| head`), as Unix
/// tools do, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut o = std::io::stdout().lock();
        if let Err(e) = writeln!(o, $($arg)*).and_then(|()| o.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// A log writer that never fails its caller: a log pipe that is gone must not stop a sync.
struct Quiet;

impl std::io::Write for Quiet {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stdout().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

/// Keeps a directory in sync with a folder on an lbsync server, sending only what changed.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Exit status: 0 done; 1 failed; 2 usage error (a bad option, URL or path); \
                  3 finished, but some paths are pending or need attention: run it again"
)]
struct Cli {
    /// Server URL [default: $LBSYNC_SERVER, else the one DIR last synced with, else http://127.0.0.1:7700]
    #[arg(long, global = true)]
    server: Option<String>,
    /// File holding the token the server expects (its first line); remembered by DIR.
    /// $LBSYNC_TOKEN gives the token itself (never remembered)
    #[arg(long, global = true, env = "LBSYNC_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// For an https:// server: trust only the CA certificates in this PEM file (else the
    /// system's roots); remembered by DIR
    #[arg(long, global = true, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// For an https:// server with a self-signed certificate: trust exactly the certificate
    /// with this fingerprint, which lbsync-server prints when it starts; remembered by DIR
    #[arg(long, global = true, value_name = "sha256:HEX", value_parser = parse_pin)]
    pin: Option<String>,
    /// Server folder to sync with [default: the one DIR last synced with, else "default"]
    #[arg(long, global = true)]
    folder: Option<String>,
    /// This device's name, shown to others and in conflicted copies [default: the host name]
    #[arg(long, global = true)]
    device: Option<String>,
    /// Carry out deletions even when there are more than the guard lets through (see --max-deletes)
    #[arg(long, global = true)]
    allow_mass_delete: bool,
    /// The guard: a sync that would delete more files than this, or more than half of the
    /// folder's files (and at least 10), deletes nothing until confirmed with --allow-mass-delete
    #[arg(long, global = true, default_value_t = 1000)]
    max_deletes: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One two-way sync of DIR with the server folder; exits 0 when they agree.
    Sync {
        /// The directory to sync.
        dir: PathBuf,
    },
    /// Syncs DIR, then keeps it in step with the server in real time until SIGINT/SIGTERM.
    Watch {
        /// The directory to keep in sync.
        dir: PathBuf,
        /// Quiet period before local changes are sent, in milliseconds.
        #[arg(long, default_value_t = 75)]
        debounce_ms: u64,
        /// Full rescan period in seconds (a safety net; 30 s when the file watcher fails).
        #[arg(long, default_value_t = 3600)]
        rescan_interval: u64,
    },
    /// What DIR's state says: server, folder, last sync, pending local changes, conflicts, bytes.
    Status {
        /// The synced directory.
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The versions the server keeps of a file.
    History {
        /// A path inside a synced directory.
        path: PathBuf,
    },
    /// Makes an old version of a file current again (then syncs it here).
    Restore {
        /// A path inside a synced directory.
        path: PathBuf,
        /// The version to restore (see `history`).
        #[arg(long)]
        version: u64,
    },
    /// Undoes a deletion: restores every path deleted by the most recent deletion event (the
    /// newest deletion and the same device's others in the minute before it), or every path
    /// deleted since TIME, then syncs DIR.
    Undelete {
        /// The synced directory.
        dir: PathBuf,
        /// Restore everything deleted at or after TIME instead (RFC 3339, or local
        /// "YYYY-MM-DD HH:MM[:SS]").
        #[arg(long, value_name = "TIME", value_parser = lbsync_client::undelete::parse_time)]
        since: Option<i64>,
        /// Only paths at or under these (inside DIR).
        paths: Vec<PathBuf>,
    },
    /// Prints a completion script for SHELL (e.g. `lbsync-client completions bash >
    /// ~/.local/share/bash-completion/completions/lbsync-client`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Writes man pages for lbsync-client and each of its commands into DIR.
    Man {
        /// Where to write them (e.g. ~/.local/share/man/man1).
        dir: PathBuf,
    },
}

/// "2026-12-01 12:30:01 message", with "warning:" or "error:" before the message when it is one.
struct Lines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Lines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(w, "{} ", chrono::Local::now().format("%Y-%m-%d %H:%M:%S"))?;
        match *event.metadata().level() {
            tracing::Level::WARN => write!(w, "warning: ")?,
            tracing::Level::ERROR => write!(w, "error: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .event_format(Lines)
        .with_writer(|| Quiet)
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "lbsync-client: {e:#}");
            let usage = matches!(
                e.downcast_ref::<lbsync_client::Error>(),
                Some(lbsync_client::Error::Usage(_) | lbsync_client::Error::BadUrl(_))
            );
            if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A mistake in how the program was called: fix the command (clap's own usage errors exit 2 too).
const EXIT_USAGE: u8 = 2;
/// The command finished, but some paths are pending or wait for a person: run it again.
const EXIT_PENDING: u8 = 3;

fn parse_pin(pin: &str) -> Result<String, String> {
    lbsync_proto::tls::parse_pin(pin).map(|_| pin.to_owned())
}

fn options(cli: &Cli) -> anyhow::Result<SyncOptions> {
    let token_file = cli
        .token_file
        .as_deref()
        .map(|f| std::path::absolute(f).with_context(|| format!("resolving {}", f.display())))
        .transpose()?;
    let token = match (std::env::var("LBSYNC_TOKEN"), &token_file) {
        (Ok(t), _) if !t.trim().is_empty() => Some(t.trim().to_owned()),
        (_, Some(f)) => Some(lbsync_client::engine::read_token_file(f)?),
        _ => None,
    };
    let ca_file = cli
        .ca_file
        .as_deref()
        .map(|f| std::path::absolute(f).with_context(|| format!("resolving {}", f.display())))
        .transpose()?;
    Ok(SyncOptions {
        server: cli.server.clone(),
        token,
        token_file,
        trust: lbsync_client::tls::Trust {
            ca_file,
            pin: cli.pin.clone(),
        },
        folder: cli.folder.clone(),
        device: cli.device.clone(),
        allow_mass_delete: cli.allow_mass_delete,
        delete_guard: lbsync_client::plan::DeleteGuard {
            max_files: cli.max_deletes,
            ..Default::default()
        },
    })
}

/// The synced directory holding `path`, and `path` inside it.
fn locate(path: &Path) -> anyhow::Result<(PathBuf, SyncPath)> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut dir = abs.parent();
    while let Some(d) = dir {
        if StateStore::dir_of(d).join("state.json").exists() {
            let rel = SyncPath::from_local(d, &abs)?;
            return Ok((d.to_path_buf(), rel));
        }
        dir = d.parent();
    }
    bail!(
        "{} is not inside a synced directory: run `lbsync-client sync DIR` first",
        path.display()
    )
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    match &cli.command {
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "lbsync-client", &mut out);
            out!("{}", String::from_utf8_lossy(&out).trim_end());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            out!("wrote the man pages into {}", dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let opts = options(&cli)?;
    match &cli.command {
        Command::Sync { dir } => {
            let mut syncer = Syncer::open(dir, &opts).await?;
            let report = syncer.sync().await?;
            out!("sync done: {report}");
            if report.in_sync() {
                return Ok(ExitCode::SUCCESS);
            }
            if !report.pending.is_empty() {
                out!(
                    "{} is not fully in sync; run sync again to finish:\n  {}",
                    dir.display(),
                    report.pending.join("\n  ")
                );
            }
            if !report.waiting.is_empty() {
                out!("needs your attention:\n  {}", report.waiting.join("\n  "));
            }
            Ok(ExitCode::from(EXIT_PENDING))
        }
        Command::Watch {
            dir,
            debounce_ms,
            rescan_interval,
        } => {
            let wopts = lbsync_client::WatchOptions {
                debounce: std::time::Duration::from_millis(*debounce_ms),
                rescan_interval: std::time::Duration::from_secs(*rescan_interval),
            };
            lbsync_client::watch(dir, &opts, &wopts, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { dir, json } => status(dir, *json),
        Command::History { path } => {
            let (root, rel) = locate(path)?;
            let mut syncer = Syncer::open(&root, &opts).await?;
            let versions = syncer.remote.history(&rel).await?;
            if versions.is_empty() {
                out!("{rel}: no versions on the server");
            }
            for e in versions {
                let when = chrono::DateTime::from_timestamp_nanos(e.committed_ns)
                    .with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S");
                let what = if e.deleted {
                    "deleted".to_owned()
                } else {
                    format!("{} bytes", e.size)
                };
                let device = e.device.split('#').next().unwrap_or("");
                out!("v{:<4} {when}  {what:>16}  by {device}", e.version);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { path, version } => {
            let (root, rel) = locate(path)?;
            // A running `watch` holds the folder: then the restore is made on the server, and
            // that watch brings it here.
            let mut syncer = match Syncer::open(&root, &opts).await {
                Err(lbsync_client::Error::Busy { .. }) => {
                    let mut state = StateStore::load(&root)?;
                    let device = format!("{}#{}", state.state.device_name, state.state.device_id);
                    let access = lbsync_client::engine::access(&opts, &mut state.state)?;
                    let mut remote = lbsync_client::remote::Remote::connect_with(
                        opts.server.as_deref().unwrap_or(&state.state.server),
                        &access,
                        &state.state.folder,
                        &device,
                    )
                    .await?;
                    match remote.restore(&rel, *version, &device).await? {
                        CommitOutcome::Committed(e) => out!(
                            "restored {rel} v{version} as v{}; the lbsync-client running on {} \
                             brings it there",
                            e.version,
                            root.display()
                        ),
                        CommitOutcome::Conflict(e) => {
                            bail!("{rel} changed meanwhile (now v{}): try again", e.version)
                        }
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                res => res?,
            };
            let device = syncer.device.clone();
            match syncer.remote.restore(&rel, *version, &device).await? {
                CommitOutcome::Committed(e) => {
                    out!("restored {rel} v{version} as v{}", e.version)
                }
                CommitOutcome::Conflict(e) => {
                    bail!("{rel} changed meanwhile (now v{}): try again", e.version)
                }
            }
            let report = syncer.sync().await?;
            out!("sync done: {report}");
            Ok(if report.in_sync() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PENDING)
            })
        }
        Command::Undelete { dir, since, paths } => {
            use lbsync_client::undelete::{UndeleteOptions, path_arg, undelete};
            let mut syncer = Syncer::open(dir, &opts).await?;
            let under = paths
                .iter()
                .map(|p| path_arg(dir, p))
                .collect::<Result<_, _>>()?;
            let done = undelete(
                &mut syncer,
                &UndeleteOptions {
                    since: *since,
                    under,
                },
            )
            .await?;
            println!("{done}");
            if let Some(report) = &done.sync {
                println!("sync done: {report}");
                if !report.in_sync() {
                    println!("  {}", report.pending.join("\n  "));
                }
            }
            Ok(if done.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PENDING)
            })
        }
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    }
}

/// SIGINT or SIGTERM.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    // The handlers are installed now, not at the first poll: a SIGTERM that comes while the
    // first syncs run must stop the client cleanly, not kill it.
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {}
            () = wait(int) => {}
        }
    }
}

fn status(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    if !StateStore::dir_of(dir).join("state.json").exists() {
        bail!(
            "{} has never been synced: run `lbsync-client sync {}`",
            dir.display(),
            dir.display()
        );
    }
    let store = StateStore::load(dir)?;
    let s = &store.state;
    let local = scan(dir)?;
    let mut pending: Vec<String> = Vec::new();
    for (path, fp) in &local.files {
        match s.files.get(path.as_str()) {
            Some(synced) if unchanged(fp, &synced.local) => {}
            Some(_) => pending.push(format!("modified {path}")),
            None => pending.push(format!("new {path}")),
        }
    }
    for path in s.files.keys() {
        if fingerprint(&dir.join(path)).is_none() {
            pending.push(format!("deleted {path}"));
        }
    }
    let mut problems: Vec<String> = local
        .unknown
        .iter()
        .map(|(p, why)| format!("{p}: cannot be read ({why}); nothing under it is synced"))
        .collect();
    problems.extend(
        s.problems
            .iter()
            .map(|(p, why)| format!("{p}: {}", why.reason)),
    );
    if s.forgotten {
        problems.push(
            "the server forgot what this folder synced (its store was replaced or restored); \
             the next sync offers it every file again"
                .into(),
        );
    }
    let conflicts: Vec<String> = local
        .files
        .keys()
        .filter(|p| lbsync_client::conflict::is_conflicted_copy(p))
        .map(ToString::to_string)
        .collect();
    let last_sync = (s.last_sync_ns > 0).then(|| {
        chrono::DateTime::from_timestamp_nanos(s.last_sync_ns)
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    });
    let trust = match (&s.pin, &s.ca_file) {
        (Some(pin), _) => Some(format!("certificate pinned to {pin}")),
        (None, Some(ca)) => Some(format!("CAs in {}", ca.display())),
        (None, None) if s.server.starts_with("https://") => Some("the system's CAs".to_owned()),
        (None, None) => None,
    };
    if json {
        let v = serde_json::json!({
            "server": s.server,
            "trust": trust,
            "token_file": s.token_file,
            "folder": s.folder,
            "device": s.device_name,
            "last_sync": last_sync,
            "cursor": s.cursor,
            "synced_paths": s.files.len(),
            "pending": pending,
            "problems": problems,
            "conflicts": conflicts,
            "bytes_sent": s.bytes_sent,
            "bytes_received": s.bytes_received,
        });
        out!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("server:    {} (folder {})", s.server, s.folder);
        if let Some(t) = &trust {
            out!("trusting:  {t}");
        }
        out!("device:    {}", s.device_name);
        out!("last sync: {}", last_sync.as_deref().unwrap_or("never"));
        out!("synced:    {} paths", s.files.len());
        out!("pending:   {} local changes", pending.len());
        for p in &pending {
            out!("  {p}");
        }
        out!("problems:  {}", problems.len());
        for p in &problems {
            out!("  {p}");
        }
        out!("conflicts: {}", conflicts.len());
        for c in &conflicts {
            out!("  {c}");
        }
        out!(
            "traffic:   {} sent, {} received",
            lbsync_client::transfer::human(s.bytes_sent),
            lbsync_client::transfer::human(s.bytes_received)
        );
    }
    Ok(ExitCode::SUCCESS)
}
