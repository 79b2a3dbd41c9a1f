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

/// Keeps a directory in sync with a folder on an lbsync server, sending only what changed.
#[derive(Parser, Debug)]
#[command(version, about, after_help = lbsync_cli::EXIT_HELP)]
struct Cli {
    #[command(flatten)]
    common: lbsync_cli::Common,
    /// Server URL, or several servers of one store separated by commas (tried in order, the next
    /// when one cannot be reached) [default: $LBSYNC_SERVER, else the one DIR last synced with,
    /// else http://127.0.0.1:7700]
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
    /// with this fingerprint, which lbsync-server prints when it starts (several servers:
    /// their fingerprints, separated by commas); remembered by DIR
    #[arg(long, global = true, value_name = "sha256:HEX[,...]", value_parser = parse_pin)]
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
    /// Sets DIR up to sync with the server folder (--server, --folder) without syncing yet. An
    /// end-to-end encrypted folder is joined with its passphrase (asked on the terminal, or
    /// --key-file) or an age identity (--identity); --encrypt makes a new, empty folder
    /// encrypted with a new key.
    Init {
        /// The directory to set up.
        dir: PathBuf,
        /// Make the folder end-to-end encrypted (it must be new or empty): the server stores
        /// only what it cannot read. Asks for a passphrase twice, unless --key-file.
        #[arg(long)]
        encrypt: bool,
        /// Read the passphrase from the first line of FILE instead of the terminal.
        #[arg(long, value_name = "FILE", conflicts_with = "identity")]
        key_file: Option<PathBuf>,
        /// Join an encrypted folder with this age identity file (see `keygen`, `share-key`)
        /// instead of a passphrase.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Changes the passphrase of DIR's encrypted folder: the folder key is wrapped anew (age
    /// identities it was shared with keep working); the data is not touched, and the old
    /// passphrase no longer opens it.
    Passphrase {
        /// A directory synced with the encrypted folder.
        dir: PathBuf,
        /// Read the new passphrase from the first line of FILE instead of the terminal.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Check first that the old passphrase, the first line of FILE, opens the folder's key.
        #[arg(long, value_name = "FILE")]
        old_key_file: Option<PathBuf>,
    },
    /// Shares DIR's encrypted folder with the holder of an age identity: its recipient can then
    /// join with `init --identity FILE`.
    ShareKey {
        /// A directory synced with the encrypted folder.
        dir: PathBuf,
        /// The age x25519 recipient (age1...), as `keygen` prints it.
        #[arg(long, value_name = "age1...")]
        recipient: String,
    },
    /// Writes a new age identity (secret key) into FILE, readable by you only, and prints its
    /// recipient, to give to someone who shares a folder with you (`share-key`).
    Keygen {
        /// The identity file to create (never overwritten).
        file: PathBuf,
    },
    /// One two-way sync of DIR with the server folder; exits 0 when they agree.
    Sync {
        /// The directory to sync.
        dir: PathBuf,
        /// Print what the sync did as JSON (the log goes to stderr).
        #[arg(long)]
        json: bool,
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Makes an old version of a file current again (then syncs it here). A local edit of the
    /// file that was never synced is kept beside it as a conflicted copy, and said so.
    Restore {
        /// A path inside a synced directory.
        path: PathBuf,
        /// The version to restore (see `history`).
        #[arg(long)]
        version: u64,
        /// Print what was done as JSON (the log goes to stderr).
        #[arg(long)]
        json: bool,
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

const PROGRAM: lbsync_cli::Program = lbsync_cli::Program {
    name: "lbsync-client",
    version: env!("CARGO_PKG_VERSION"),
    config_file: "client.toml",
};

#[tokio::main]
async fn main() -> ExitCode {
    let parsed = lbsync_cli::parse::<Cli>(&PROGRAM, std::env::args_os().collect());
    let cli = parsed.cli;
    // The log shares stdout with what the commands print, except under --json, whose stdout
    // is the JSON alone.
    let json = matches!(
        cli.command,
        Command::Sync { json: true, .. }
            | Command::Status { json: true, .. }
            | Command::History { json: true, .. }
            | Command::Restore { json: true, .. }
    );
    lbsync_cli::logging::init(
        &cli.common,
        lbsync_cli::logging::Setup {
            stream: if json {
                lbsync_cli::logging::Stream::Stderr
            } else {
                lbsync_cli::logging::Stream::Stdout
            },
            style: lbsync_cli::logging::Style::Person,
            noisy: &["h2", "tower", "hyper"],
        },
    );
    match run(cli, &parsed.command).await {
        Ok(code) => code,
        Err(e) => {
            lbsync_cli::errors::print_fatal(PROGRAM.name, e.as_ref());
            let usage = matches!(
                e.downcast_ref::<lbsync_client::Error>(),
                Some(lbsync_client::Error::Usage(_) | lbsync_client::Error::BadUrl(_))
            );
            if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(lbsync_cli::EXIT_FATAL)
            }
        }
    }
}

/// A mistake in how the program was called: fix the command (clap's own usage errors exit 2 too).
const EXIT_USAGE: u8 = lbsync_cli::EXIT_USAGE;
/// The command finished, but some paths are pending or wait for a person: run it again.
const EXIT_PENDING: u8 = lbsync_cli::EXIT_PENDING;

fn parse_pin(pin: &str) -> Result<String, String> {
    lbsync_proto::tls::parse_pins(pin).map(|_| pin.to_owned())
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
        if StateStore::exists(d) {
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

/// Prints `v` as pretty JSON on stdout.
fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A sync's report as JSON: the report's own fields, the directory, and whether it is in sync.
fn report_json(dir: &Path, report: &lbsync_client::Report) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(report)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("dir".into(), dir.display().to_string().into());
        o.insert("in_sync".into(), report.in_sync().into());
    }
    Ok(v)
}

/// The exit status for a finished sync.
fn sync_code(report: &lbsync_client::Report) -> ExitCode {
    if report.in_sync() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PENDING)
    }
}

/// True when the file at `rel` holds something DIR's state never synced: an edit made since
/// the last sync, or a file the server never had from here.
fn unsynced_edit(root: &Path, state: &lbsync_client::state::State, rel: &SyncPath) -> bool {
    let Some(now) = fingerprint(&rel.to_local(root)) else {
        return false;
    };
    match state.files.get(rel.as_str()) {
        Some(synced) => !unchanged(&now, &synced.local),
        None => true,
    }
}

async fn run(cli: Cli, command: &clap::Command) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Completions { shell } => {
            let script = lbsync_cli::generate::completions(command, *shell);
            out!("{}", String::from_utf8_lossy(&script).trim_end());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => {
            lbsync_cli::generate::man_pages(command, dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            out!("wrote the man pages into {}", dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    if let Command::Keygen { file } = &cli.command {
        let recipient = lbsync_client::keys::keygen(file)?;
        out!(
            "wrote a new age identity into {} (keep it secret)",
            file.display()
        );
        out!("its recipient (give this one out): {recipient}");
        return Ok(ExitCode::SUCCESS);
    }
    let opts = options(&cli)?;
    match &cli.command {
        Command::Init {
            dir,
            encrypt,
            key_file,
            identity,
        } => {
            use lbsync_client::keys::{InitOptions, Passphrase, init};
            let how = InitOptions {
                encrypt: *encrypt,
                passphrase: Passphrase {
                    file: key_file.clone(),
                },
                identity: identity.clone(),
            };
            let done = init(dir, &opts, &how).await?;
            out!("{done}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Passphrase {
            dir,
            key_file,
            old_key_file,
        } => {
            use lbsync_client::keys::{Passphrase, change_passphrase};
            let new = Passphrase {
                file: key_file.clone(),
            };
            let old = old_key_file.clone().map(|f| Passphrase { file: Some(f) });
            let done = change_passphrase(dir, &opts, &new, old.as_ref()).await?;
            out!(
                "folder {} has a new passphrase (keys at generation {}); the old one no longer \
                 opens it. The data was not touched; other devices keep syncing",
                done.folder,
                done.generation
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ShareKey { dir, recipient } => {
            let done = lbsync_client::keys::share_key(dir, &opts, recipient).await?;
            out!(
                "folder {} is shared with {recipient} ({} now); it joins with \
                 `lbsync-client init DIR --folder {} --identity FILE`",
                done.folder,
                lbsync_cli::units::count(done.wraps as u64, "wrapped key"),
                done.folder
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { dir, json } => {
            let mut syncer = Syncer::open(dir, &opts).await?;
            let report = syncer.sync().await?;
            if *json {
                print_json(&report_json(dir, &report)?)?;
                return Ok(sync_code(&report));
            }
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
        Command::History { path, json } => {
            let (root, rel) = locate(path)?;
            let mut syncer = Syncer::open(&root, &opts).await?;
            let checked = syncer.remote.history_checked(&rel).await?;
            let tampered: Vec<String> = checked
                .iter()
                .filter_map(|v| v.as_ref().err().cloned())
                .collect();
            let versions: Vec<lbsync_proto::Entry> =
                checked.into_iter().filter_map(Result::ok).collect();
            if *json {
                let items: Vec<serde_json::Value> = versions
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "version": e.version,
                            "committed": lbsync_cli::units::rfc3339(e.committed_ns),
                            "deleted": e.deleted,
                            "size": e.size,
                            "device": e.device.split('#').next().unwrap_or(""),
                            "seq": e.seq,
                        })
                    })
                    .collect();
                print_json(&serde_json::json!({
                    "path": rel.as_str(),
                    "versions": items,
                    "tampered": tampered,
                }))?;
                return Ok(ExitCode::SUCCESS);
            }
            for why in &tampered {
                out!("tampered: {why}");
            }
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
                    lbsync_cli::units::count(e.size, "byte")
                };
                let device = e.device.split('#').next().unwrap_or("");
                out!("v{:<4} {when}  {what:>16}  by {device}", e.version);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            path,
            version,
            json,
        } => restore(&opts, path, *version, *json).await,
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
            out!("{done}");
            if let Some(report) = &done.sync {
                out!("sync done: {report}");
                if !report.in_sync() {
                    out!("  {}", report.pending.join("\n  "));
                }
            }
            Ok(if done.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PENDING)
            })
        }
        Command::Completions { .. } | Command::Man { .. } | Command::Keygen { .. } => {
            unreachable!("handled above")
        }
    }
}

/// `restore PATH --version V`. Safety rule 1: a local edit of PATH that DIR never synced is not
/// overwritten by the restored version: it is moved aside as a conflicted copy (which the sync
/// that follows sends), and the output says so.
async fn restore(
    opts: &SyncOptions,
    path: &Path,
    version: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (root, rel) = locate(path)?;
    // A running `watch` holds the folder: then the restore is made on the server, and that
    // watch brings it here.
    let mut syncer = match Syncer::open(&root, opts).await {
        Err(lbsync_client::Error::Busy { .. }) => {
            let mut state = StateStore::load(&root)?;
            if unsynced_edit(&root, &state.state, &rel) {
                bail!(
                    "{rel} has a local edit the lbsync-client running on {} has not sent yet; \
                     nothing was restored: wait until it is sent (`lbsync-client status {}` \
                     shows none pending), then run this again",
                    root.display(),
                    root.display()
                );
            }
            let device = format!("{}#{}", state.state.device_name, state.state.device_id);
            let access = lbsync_client::engine::access(opts, &mut state.state)?;
            let mut remote = lbsync_client::remote::Remote::connect_with(
                opts.server.as_deref().unwrap_or(&state.state.server),
                &access,
                &state.state.folder,
                &device,
            )
            .await?;
            let codec = lbsync_client::codec::FolderCodec::of_folder(&state)?;
            lbsync_client::codec::check_handshake(
                &root,
                &state.state.folder,
                &codec,
                remote.encrypted,
            )?;
            remote.set_codec(codec);
            match remote.restore(&rel, version, &device).await? {
                CommitOutcome::Committed(e) => {
                    if json {
                        print_json(&serde_json::json!({
                            "path": rel.as_str(),
                            "version": version,
                            "restored_as": e.version,
                            "kept_local_edit_as": null,
                            "sync": null,
                        }))?;
                    } else {
                        out!(
                            "restored {rel} v{version} as v{}; the lbsync-client running on {} \
                             brings it there",
                            e.version,
                            root.display()
                        );
                    }
                }
                CommitOutcome::Conflict(e) => {
                    bail!("{rel} changed meanwhile (now v{}): try again", e.version)
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        res => res?,
    };
    let edited = unsynced_edit(&root, &syncer.state.state, &rel);
    let device = syncer.device.clone();
    let restored_as = match syncer.remote.restore(&rel, version, &device).await? {
        CommitOutcome::Committed(e) => e.version,
        CommitOutcome::Conflict(e) => {
            bail!("{rel} changed meanwhile (now v{}): try again", e.version)
        }
    };
    // Restored on the server: only now is the edit moved aside, so that a failed restore
    // leaves the file where it was. The folder is locked: no sync runs in between.
    let kept = if edited {
        let copy = lbsync_client::conflict::conflicted_copy(
            &root,
            &rel,
            &syncer.state.state.device_name,
            chrono::Local::now(),
        );
        let from = lbsync_client::confine::check(&root, &rel)?;
        let to = lbsync_client::confine::check(&root, &copy)?;
        std::fs::rename(&from, &to).with_context(|| {
            format!(
                "keeping the local edit of {rel} as {copy} (the server has v{version} as \
                 v{restored_as}; the next sync brings it, and your edit may then conflict)"
            )
        })?;
        Some(copy)
    } else {
        None
    };
    let report = syncer.sync().await?;
    if json {
        print_json(&serde_json::json!({
            "path": rel.as_str(),
            "version": version,
            "restored_as": restored_as,
            "kept_local_edit_as": kept.as_ref().map(SyncPath::as_str),
            "sync": report_json(&root, &report)?,
        }))?;
    } else {
        out!("restored {rel} v{version} as v{restored_as}");
        if let Some(copy) = &kept {
            out!(
                "{rel} had a local edit that was never synced: it is kept as {copy} (and sent to \
                 the server), the restored version took its name"
            );
        }
        out!("sync done: {report}");
    }
    Ok(sync_code(&report))
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
    if !StateStore::exists(dir) {
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
    if s.rescan {
        problems.push(
            "the server forgot deletions older than its retention that this folder may not have \
             seen; the next sync re-scans (it offers again what the server no longer lists and \
             deletes nothing for it)"
                .into(),
        );
    }
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
    let last_sync_utc = (s.last_sync_ns > 0).then(|| lbsync_cli::units::rfc3339(s.last_sync_ns));
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
            "last_sync": last_sync_utc,
            "cursor": s.cursor,
            "synced_paths": s.files.len(),
            "pending": pending,
            "problems": problems,
            "conflicts": conflicts,
            "bytes_sent": s.bytes_sent,
            "bytes_received": s.bytes_received,
            "encrypted": s.encrypted.is_some(),
            "key_fingerprint": s.encrypted,
        });
        out!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("server:    {} (folder {})", s.server, s.folder);
        if let Some(fp) = &s.encrypted {
            out!("encrypted: end to end (key fingerprint {fp})");
        }
        if let Some(t) = &trust {
            out!("trusting:  {t}");
        }
        out!("device:    {}", s.device_name);
        out!("last sync: {}", last_sync.as_deref().unwrap_or("never"));
        out!(
            "synced:    {}",
            lbsync_cli::units::count(s.files.len() as u64, "path")
        );
        out!(
            "pending:   {}",
            lbsync_cli::units::count(pending.len() as u64, "local change")
        );
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
            lbsync_cli::units::bytes(s.bytes_sent),
            lbsync_cli::units::bytes(s.bytes_received)
        );
    }
    Ok(ExitCode::SUCCESS)
}
