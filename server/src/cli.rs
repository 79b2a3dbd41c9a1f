//! The `lbsync-server` command line: serves a store, or checks, collects or measures it.
//!
//! It lives in the library so that tests can run the very same program in a child process they
//! can SIGKILL (`main.rs` is one line).
//!
//! Output never fails the program: the log goes to stderr through `lbsync_cli::logging`, which
//! drops what cannot be written (stderr closed, a broken pipe), and the reports on stdout end quietly when
//! the reader has gone (`lbsync-server stats | head -1`). The print macros would panic there,
//! and a panic in a request's task fails the request.

use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::admin::{self, Retention};
use crate::{Limits, ServerConfig, Tokens};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lbsync_chunkstore::PackStore;

use crate::backend::Backend;

/// lbsync's server: keeps folders in sync across clients, storing each distinct chunk once.
#[derive(Parser, Debug)]
#[command(version, about, after_help = lbsync_cli::EXIT_HELP)]
struct Cli {
    #[command(flatten)]
    common: lbsync_cli::Common,
    /// The store directory (serving creates it if missing; `init` creates it; every other
    /// command needs it to exist), or a store that several servers share on an object store,
    /// `s3://BUCKET/PREFIX?endpoint=URL&region=R` (with --metadata; the credentials come from
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) [default: $XDG_DATA_HOME/lbsync/store, else
    /// ~/.local/share/lbsync/store]
    #[arg(long, global = true, env = "LBSYNC_STORE", default_value_os_t = default_store(), hide_default_value = true)]
    store: PathBuf,
    /// The PostgreSQL database of a store on an object store: its folders, users and chunk
    /// index, shared by every server of that store (postgres://USER@HOST:PORT/DATABASE)
    #[arg(long, global = true, env = "LBSYNC_METADATA", value_name = "URL")]
    metadata: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// A file of accepted tokens, one per line; clients send one as `authorization: Bearer`.
    /// (Its variable is not the client's `LBSYNC_TOKEN_FILE`, the token a client sends: one
    /// shell may run both.)
    #[arg(long, env = "LBSYNC_SERVER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without tokens (anyone who can connect can read and write).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Listen on a non-loopback address without TLS (tokens and file contents cross the network
    /// in clear text: only for a network where nobody can listen).
    #[arg(long)]
    insecure_plaintext: bool,
    /// PEM certificate chain, to serve TLS (with --tls-key) [default: STORE/tls/cert.pem if
    /// `lbsync-server cert` made one]
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key, to serve TLS (with --tls-cert) [default: STORE/tls/key.pem]
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; loopback only unless
    /// --insecure-metrics).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve metrics on a non-loopback address (anyone who can connect reads them, without a
    /// token).
    #[arg(long)]
    insecure_metrics: bool,
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, default_value_t = Limits::default().max_message_bytes)]
    max_message_bytes: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates an empty store (serving creates one too, at its first start).
    Init {
        /// For a store on an object store: the shortest grace period `gc` may ever use on it,
        /// recorded in the store (servers keep the chunks a commit references from a collection
        /// running meanwhile by renewing them once older than half of it) [default: 10m]
        #[arg(long, value_name = "AGE", value_parser = lbsync_cli::units::parse_duration)]
        min_grace: Option<Duration>,
    },
    /// Check every pack record, hash and index entry, and every file version's chunks.
    Fsck {
        /// Truncate torn pack tails and rebuild the index from the packs.
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON (stable snake_case fields, sizes in bytes, RFC 3339 UTC).
        #[arg(long)]
        json: bool,
    },
    /// Forget deletions past their retention, drop old versions beyond the retention and delete
    /// chunks nothing references.
    Gc {
        #[command(flatten)]
        args: GcArgs,
        /// Print the report as JSON (stable snake_case fields, sizes in bytes, RFC 3339 UTC).
        #[arg(long)]
        json: bool,
    },
    /// Chunks, logical and stored bytes, dedup ratio, folders and files.
    Stats {
        /// Print the report as JSON (stable snake_case fields, sizes in bytes, RFC 3339 UTC).
        #[arg(long)]
        json: bool,
    },
    /// Makes a self-signed TLS certificate in STORE/tls/, which the server then serves; clients
    /// trust it with `--pin` and the fingerprint this prints.
    Cert {
        /// Names (or IP addresses) the certificate is for [default: this host's name, localhost]
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Replace a certificate made before (clients that pinned it must pin the new one).
        #[arg(long)]
        force: bool,
    },
    /// Users (stop the server first: the store is locked while it runs).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Tokens of users (stop the server first, except to revoke: see `token revoke`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Lets another user sync a folder.
    Share {
        /// The folder.
        folder: String,
        /// The user.
        #[arg(long = "with")]
        user: String,
        /// They may read it, never change it.
        #[arg(long)]
        read_only: bool,
    },
    /// Stops sharing a folder with a user.
    Unshare {
        /// The folder.
        folder: String,
        /// The user.
        #[arg(long = "with")]
        user: String,
    },
    /// Prints a completion script for SHELL (e.g. `lbsync-server completions bash >
    /// ~/.local/share/bash-completion/completions/lbsync-server`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Writes man pages for lbsync-server and each of its commands into DIR.
    Man {
        /// Where to write them (e.g. ~/.local/share/man/man1).
        dir: PathBuf,
    },
}

/// What `gc` keeps, and whether it only looks.
#[derive(clap::Args, Debug, Clone, Copy)]
struct GcArgs {
    /// Say what would be done, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep at least this many versions of each path.
    #[arg(long, default_value_t = Retention::default().keep_versions)]
    keep_versions: usize,
    /// And every version younger than this many days.
    #[arg(long, default_value_t = 30)]
    keep_days: u64,
    /// Forget a deletion (and every kept version of its path) once it is older than this:
    /// 180d, 12h, 90m, 30s, 2w, 1d12h. Keep it longer than any device may stay offline. A
    /// device that was away longer re-scans when it comes back: it offers its copy of a path
    /// the server no longer lists again, and deletes nothing for it; so a file deleted
    /// meanwhile may come back from it, and is never lost.
    #[arg(long, value_name = "AGE", default_value = "180d",
          value_parser = lbsync_cli::units::parse_duration)]
    keep_tombstones: Duration,
    /// Never delete chunks stored less than this many seconds ago (uploads awaiting commit).
    #[arg(long, default_value_t = 3600)]
    grace_secs: u64,
}

impl GcArgs {
    fn retention(&self) -> Retention {
        Retention {
            keep_versions: self.keep_versions,
            keep_for: Duration::from_secs(self.keep_days * 24 * 3600),
            keep_tombstones: self.keep_tombstones,
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Adds a user.
    Add {
        /// 1-64 letters, digits, '.', '_' or '-'.
        name: String,
    },
    /// Lists the users, their tokens and folders.
    List,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Makes a token for a user and prints it, once: the store keeps only its hash.
    Create {
        /// Whose token.
        #[arg(long)]
        user: String,
        /// It may read, never change anything.
        #[arg(long)]
        read_only: bool,
        /// It may use only this folder.
        #[arg(long)]
        folder: Option<String>,
    },
    /// Revokes a token by its id (as `user list` shows it).
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `$XDG_DATA_HOME/lbsync/store` (else `~/.local/share/lbsync/store`).
fn default_store() -> PathBuf {
    lbsync_cli::dirs::data(&lbsync_cli::dirs::process_env)
        .map(|d| d.join("store"))
        .unwrap_or_else(|| PathBuf::from("lbsync-store"))
}

const PROGRAM: lbsync_cli::Program = lbsync_cli::Program {
    name: "lbsync-server",
    version: env!("CARGO_PKG_VERSION"),
    config_file: "server.toml",
};

/// How a command opens the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    /// Only to look (it changes no pack); the store must exist.
    ReadOnly,
    /// To change; the store must exist (an admin command on a mistyped path creates nothing).
    Existing,
    /// To serve: created if missing.
    Create,
}

/// Why the store at `dir` is locked, in words: the pid of the server that holds it, from its pid
/// file, when there is one.
fn locked(dir: &Path) -> anyhow::Error {
    let pid = std::fs::read_to_string(crate::pid_path(dir))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
    match pid {
        Some(pid) => anyhow::anyhow!(
            "the store at {} is locked by lbsync-server pid {pid}, which is serving it: stop that \
             server first (`kill -TERM {pid}`, or `systemctl stop lbsync-server`), then run this \
             command again",
            dir.display()
        ),
        None => anyhow::anyhow!(
            "the store at {} is locked by another process (not a serving lbsync-server: maybe \
             another admin command): wait for it to finish or stop it, then run this command again",
            dir.display()
        ),
    }
}

/// Opens the store at `dir` as `how` says.
fn open_store(dir: &Path, how: Open) -> anyhow::Result<PackStore> {
    let read_only = how == Open::ReadOnly;
    let store = match how {
        Open::ReadOnly => PackStore::open_read_only(dir),
        Open::Existing => PackStore::open_existing(dir),
        Open::Create => PackStore::open(dir),
    };
    let store = match store {
        Ok(s) => s,
        Err(lbsync_chunkstore::Error::Locked { .. }) => return Err(locked(dir)),
        // It names the path and says what to do.
        Err(e @ lbsync_chunkstore::Error::NoStore { .. }) => return Err(e.into()),
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("opening store at {}", dir.display()))
            );
        }
    };
    let r = store.recovery();
    if r.created {
        tracing::info!("created a new store at {}", dir.display());
    }
    if r.reindexed > 0 || !r.truncated.is_empty() {
        tracing::warn!(
            "recovered from an unclean stop: re-indexed {}{}, cut {}",
            lbsync_cli::units::count(r.reindexed, "chunk"),
            if read_only { " (in memory)" } else { "" },
            lbsync_cli::units::count(r.truncated.len() as u64, "torn pack tail")
        );
    }
    for (pack, offset, bytes) in &r.skipped {
        tracing::warn!(
            "pack {pack:08}: skipped {bytes} damaged bytes at offset {offset}; the chunks stored \
             there are missing until a client uploads them again"
        );
    }
    if r.salvaged > 0 {
        tracing::warn!(
            "kept {} sound records found after damaged bytes",
            r.salvaged
        );
    }
    for (pack, offset, bytes) in &r.torn_left {
        tracing::warn!(
            "pack {pack:08}: {bytes} bytes of an unfinished record at offset {offset}, left in \
             place (read-only); the next server start or `fsck --repair` cuts them"
        );
    }
    Ok(store)
}

/// Runs `lbsync-server` with these arguments (the first is the program name) and returns its exit
/// code.
pub fn main<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    // The command line, then LBSYNC_* variables, then $XDG_CONFIG_HOME/lbsync/server.toml.
    let parsed = lbsync_cli::parse::<Cli>(&PROGRAM, args.clone());
    let cli = parsed.cli;
    lbsync_cli::logging::init(
        &cli.common,
        lbsync_cli::logging::Setup {
            stream: lbsync_cli::logging::Stream::Stderr,
            style: lbsync_cli::logging::Style::Service,
            noisy: &["h2", "tower", "hyper"],
        },
    );
    match &cli.command {
        Some(Command::Completions { shell }) => {
            let script = lbsync_cli::generate::completions(&parsed.command, *shell);
            report(&String::from_utf8_lossy(&script).trim_end());
            return std::process::ExitCode::SUCCESS;
        }
        Some(Command::Man { dir }) => {
            return match lbsync_cli::generate::man_pages(&parsed.command, dir) {
                Ok(()) => {
                    report(&format!("wrote the man pages into {}", dir.display()));
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    let e = anyhow::Error::new(e)
                        .context(format!("writing man pages into {}", dir.display()));
                    lbsync_cli::errors::print_fatal(PROGRAM.name, e.as_ref());
                    std::process::ExitCode::from(lbsync_cli::EXIT_FATAL)
                }
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "lbsync-server: cannot start the async runtime: {e}"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    // An admin command for a running server is forwarded as it was given.
    let forwarded = args
        .iter()
        .skip(1)
        .map(|a| a.to_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    match runtime.block_on(run(cli, forwarded)) {
        Ok(code) => code,
        Err(e) => {
            lbsync_cli::errors::print_fatal(PROGRAM.name, e.as_ref());
            std::process::ExitCode::from(lbsync_cli::EXIT_FATAL)
        }
    }
}

/// Prints a report on stdout. A reader that has gone (a closed pipe) is not an error: the
/// command's work is done, and no one is left to tell.
fn report(r: &dyn Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{r}").and_then(|()| out.flush());
}

/// Prints `json` on stdout, pretty-printed (see [`report`]).
fn report_json(json: &serde_json::Value) {
    let text =
        serde_json::to_string_pretty(json).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    report(&text);
}

/// A store on an object store and its metadata, when `--store` names one.
fn shared_store(cli: &Cli) -> anyhow::Result<Option<(String, String)>> {
    let store = cli.store.to_string_lossy().into_owned();
    match (crate::backend::is_object_store_url(&store), &cli.metadata) {
        (true, Some(metadata)) => Ok(Some((store, metadata.clone()))),
        (true, None) => bail!(
            "the store {store} is on an object store, and keeps its folders, users and chunk \
             index in PostgreSQL: pass --metadata postgres://USER@HOST:PORT/DATABASE (or set \
             LBSYNC_METADATA)"
        ),
        (false, Some(_)) => bail!(
            "--metadata is for a store on an object store (--store s3://BUCKET/PREFIX?…); the \
             store in {store} keeps its metadata inside it: leave --metadata out"
        ),
        (false, None) => Ok(None),
    }
}

/// The commands on a store that several servers share: serving, `init`, the user, token and
/// share commands (straight to PostgreSQL: every server sees them at once), `gc` (one at a
/// time, while the servers serve), `fsck` and `stats`.
async fn run_shared(
    mut cli: Cli,
    store: String,
    metadata: String,
) -> anyhow::Result<std::process::ExitCode> {
    if let Some(Command::Cert { .. }) = &cli.command {
        bail!(
            "a store on an object store has no directory to keep a certificate in: make one \
             with `lbsync-server --store DIR cert` and pass --tls-cert and --tls-key"
        );
    }
    let create = match &cli.command {
        None => Some(crate::backend::DEFAULT_MIN_GRACE),
        Some(Command::Init { min_grace }) => {
            Some(min_grace.unwrap_or(crate::backend::DEFAULT_MIN_GRACE))
        }
        Some(_) => None,
    };
    let backend = {
        let (store, metadata) = (store.clone(), metadata.clone());
        tokio::task::spawn_blocking(move || Backend::shared_with(&store, &metadata, create))
            .await??
    };
    match cli.command.take() {
        None => return serve(cli, backend, None).await,
        Some(Command::Init { .. }) => report(&format!(
            "the store {} (id {}) is ready; serve it with `lbsync-server --store '{store}' \
             --metadata URL`",
            backend.describe, backend.store_id
        )),
        Some(
            cmd @ (Command::User { .. }
            | Command::Token { .. }
            | Command::Share { .. }
            | Command::Unshare { .. }),
        ) => report(&tokio::task::spawn_blocking(move || admin(&backend, cmd)).await??),
        Some(Command::Gc { args, json }) => {
            let gc = tokio::task::spawn_blocking(move || {
                // One collection at a time over the shared store (servers serve on meanwhile).
                let pg = backend
                    .pg
                    .clone()
                    .context("a shared store without its database")?;
                let gc = pg.if_free(crate::pg::GC_LOCK, || {
                    admin::gc(&backend, args.retention(), args.grace(), args.dry_run)
                })?;
                anyhow::Ok(gc.ok_or_else(crate::pg::gc_running)?)
            })
            .await??;
            if json {
                report_json(&gc.to_json());
            } else {
                report(&gc);
            }
        }
        Some(Command::Fsck { repair: true, .. }) => bail!(
            "fsck --repair rebuilds a store directory's index from its packs; a shared store's \
             index is written only after its packs are, so there is nothing to rebuild: run fsck \
             without --repair, and sync a client that has the files it names as damaged"
        ),
        Some(Command::Fsck { json, .. }) => {
            let fsck = tokio::task::spawn_blocking(move || admin::fsck_shared(&backend)).await??;
            if json {
                report_json(&fsck.to_json());
            } else {
                report(&fsck);
            }
            if !fsck.is_clean() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Some(Command::Stats { json }) => {
            let stats = tokio::task::spawn_blocking(move || admin::stats(&backend)).await??;
            if json {
                report_json(&stats.to_json());
            } else {
                report(&stats);
            }
        }
        Some(_) => bail!("completions and man are run above"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run(cli: Cli, args: Vec<String>) -> anyhow::Result<std::process::ExitCode> {
    if let Some((store, metadata)) = shared_store(&cli)? {
        return run_shared(cli, store, metadata).await;
    }
    if let Some(Command::Init { min_grace }) = &cli.command {
        if min_grace.is_some() {
            bail!(
                "--min-grace is for a store on an object store, where gc runs while servers \
                 serve; a store in a directory is collected with its server stopped, with any \
                 grace period"
            );
        }
        let dir = cli.store.clone();
        if PackStore::exists(&dir) {
            bail!(
                "there is a store at {} already: nothing to do (serve it with `lbsync-server \
                 --store {}`)",
                dir.display(),
                dir.display()
            );
        }
        let store = tokio::task::spawn_blocking(move || open_store(&dir, Open::Create)).await??;
        let id = store.store_id().to_owned();
        tokio::task::spawn_blocking(move || store.flush()).await??;
        report(&format!(
            "created a store at {} (id {id}); serve it with `lbsync-server --store {}`",
            cli.store.display(),
            cli.store.display()
        ));
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if matches!(cli.command, Some(Command::Cert { .. })) && !PackStore::exists(&cli.store) {
        return Err(lbsync_chunkstore::Error::NoStore {
            dir: cli.store.clone(),
        }
        .into());
    }
    if let Some(Command::Cert { names, force }) = &cli.command {
        let made = crate::tls::make_self_signed(&cli.store, names, *force)?;
        report(&made);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(
        cmd @ (Command::User { .. }
        | Command::Token { .. }
        | Command::Share { .. }
        | Command::Unshare { .. }),
    ) = cli.command
    {
        // A running server holds the store: it runs the command, through its admin socket.
        let text = match crate::control::call(&cli.store, &args).await {
            Some(answer) => answer?,
            None => {
                // A locked store whose server does not answer: `open_store` names its pid.
                let store = open_store(&cli.store, Open::Existing)?;
                tokio::task::spawn_blocking(move || admin(&Backend::local(store)?, cmd)).await??
            }
        };
        report(&text);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let how = match &cli.command {
        Some(Command::Fsck { repair: false, .. })
        | Some(Command::Gc {
            args: GcArgs { dry_run: true, .. },
            ..
        })
        | Some(Command::Stats { .. }) => Open::ReadOnly,
        Some(_) => Open::Existing,
        None => Open::Create,
    };
    let store = open_store(&cli.store, how)?;
    match cli.command {
        Some(Command::Fsck { repair, json }) => {
            let fsck = tokio::task::spawn_blocking(move || admin::fsck(&store, repair)).await??;
            if json {
                report_json(&fsck.to_json());
            } else {
                report(&fsck);
            }
            return Ok(if fsck.is_clean() || fsck.store.repaired {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            });
        }
        Some(Command::Gc { args, json }) => {
            let gc = tokio::task::spawn_blocking(move || {
                admin::gc(
                    &Backend::local(store)?,
                    args.retention(),
                    args.grace(),
                    args.dry_run,
                )
            })
            .await??;
            if json {
                report_json(&gc.to_json());
            } else {
                report(&gc);
            }
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Some(Command::Stats { json }) => {
            let stats = tokio::task::spawn_blocking(move || admin::stats(&Backend::local(store)?))
                .await??;
            if json {
                report_json(&stats.to_json());
            } else {
                report(&stats);
            }
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Some(_) => bail!("admin commands are run above"),
        None => {}
    }
    let dir = cli.store.clone();
    serve(cli, Backend::local(store)?, Some(dir)).await
}

/// Serves `backend` as the command line says; `dir` is the embedded store's directory (its
/// `tls/` may hold the certificate `cert` made).
async fn serve(
    cli: Cli,
    backend: Backend,
    dir: Option<PathBuf>,
) -> anyhow::Result<std::process::ExitCode> {
    let tokens = cli
        .token_file
        .as_deref()
        .map(Tokens::load)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let user_tokens = {
        let users = backend.users.clone();
        tokio::task::spawn_blocking(move || users.any_tokens()).await?
    };
    if !cli.listen.ip().is_loopback() && tokens.is_none() && !user_tokens && !cli.insecure_no_auth {
        bail!(
            "refusing to listen on {} without a token file: pass --token-file FILE (or \
             --insecure-no-auth to let anyone who can connect read and write)",
            cli.listen
        );
    }
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(c), Some(k)) => Some(crate::tls::load(c, k)?),
        _ => match &dir {
            Some(dir) => crate::tls::load_made(dir)?,
            None => None,
        },
    };
    if !cli.listen.ip().is_loopback() && tls.is_none() && !cli.insecure_plaintext {
        bail!(
            "refusing to listen on {} without TLS: tokens and file contents would cross the \
             network in clear text. Run `lbsync-server cert` once to make a certificate (or pass \
             --tls-cert and --tls-key), or pass --insecure-plaintext on a network nobody else \
             can listen on",
            cli.listen
        );
    }
    if let Some(t) = &tls {
        tracing::info!(
            "TLS certificate {}: clients that do not trust its CA connect with --pin {}",
            t.fingerprint,
            t.fingerprint
        );
    }
    let tls = tls.map(|t| (t.cert_pem, t.key_pem));
    let metrics = crate::Metrics::new();
    let metrics_task = match cli.metrics_listen {
        Some(addr) => {
            if !addr.ip().is_loopback() && !cli.insecure_metrics {
                bail!(
                    "refusing to serve metrics on {addr}: anyone who can connect could read them, \
                     without a token. Use a loopback address (e.g. 127.0.0.1:9700) and let the \
                     scraper reach it locally, or pass --insecure-metrics on a network where \
                     that is fine"
                );
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for metrics on {addr}"))?;
            let bound = listener.local_addr().context("the metrics address")?;
            tracing::info!("metrics on http://{bound}/metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
            )))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    let config = ServerConfig {
        tokens,
        tls,
        limits: Limits {
            max_message_bytes: cli.max_message_bytes,
            ..Limits::default()
        },
        metrics,
    };
    let served = crate::run(listener, backend, config, shutdown_signal()).await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    served?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Runs an admin command that came through the admin socket (see `control`): its output, or
/// why it was refused.
pub(crate) fn admin_args(backend: &Backend, args: Vec<String>) -> Result<String, String> {
    let cli = Cli::try_parse_from(std::iter::once("lbsync-server".to_owned()).chain(args))
        .map_err(|e| e.to_string())?;
    match cli.command {
        Some(
            cmd @ (Command::User { .. }
            | Command::Token { .. }
            | Command::Share { .. }
            | Command::Unshare { .. }),
        ) => admin(backend, cmd).map_err(|e| format!("{e:#}")),
        _ => Err("only user, token, share and unshare commands reach a running server".into()),
    }
}

/// Runs a user, token, share or unshare command on the store and returns what to print.
fn admin(backend: &Backend, command: Command) -> anyhow::Result<String> {
    let users = &backend.users;
    Ok(match command {
        Command::User {
            command: UserCommand::Add { name },
        } => {
            users.add_user(&name)?;
            format!(
                "added user {name}; make a token with `lbsync-server token create --user {name}`"
            )
        }
        Command::User {
            command: UserCommand::List,
        } => {
            let tokens = users.tokens()?;
            let mut lines = Vec::new();
            for name in users.user_names()? {
                lines.push(name.clone());
                for t in tokens.iter().filter(|t| t.user == name) {
                    let when = chrono::DateTime::from_timestamp_nanos(t.created_ns)
                        .format("%Y-%m-%d %H:%M UTC");
                    lines.push(format!(
                        "  token {}  {}{}  made {when}",
                        t.id,
                        if t.read_only {
                            "read-only"
                        } else {
                            "read-write"
                        },
                        t.folder
                            .as_deref()
                            .map(|f| format!(", folder {f} only"))
                            .unwrap_or_default()
                    ));
                }
                for (folder, role) in users.folders_of(&name)? {
                    lines.push(format!("  folder {folder}  {role}"));
                }
            }
            if lines.is_empty() {
                "no users; add one with `lbsync-server user add NAME`".to_owned()
            } else {
                lines.join("\n")
            }
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    user,
                    read_only,
                    folder,
                },
        } => {
            let (info, token) = users.create_token(&user, read_only, folder.as_deref())?;
            format!(
                "{token}\n\ntoken {} for {user}{}{}: shown this once, the server keeps only its \
                 hash; give it to {user}, who puts it in a file and passes --token-file FILE",
                info.id,
                if read_only { ", read-only" } else { "" },
                folder
                    .as_deref()
                    .map(|f| format!(", folder {f} only"))
                    .unwrap_or_default()
            )
        }
        Command::Token {
            command: TokenCommand::Revoke { id },
        } => {
            if !users.revoke_token(&id)? {
                bail!("no token {id}: see `lbsync-server user list`");
            }
            format!("revoked token {id}; clients using it are refused from now on")
        }
        Command::Share {
            folder,
            user,
            read_only,
        } => {
            backend
                .folders
                .head(&folder)
                .with_context(|| format!("sharing folder {folder}"))?;
            users.share(&folder, &user, read_only)?;
            format!(
                "folder {folder} is shared with {user}, {}",
                if read_only { "read-only" } else { "read-write" }
            )
        }
        Command::Unshare { folder, user } => {
            if !users.unshare(&folder, &user)? {
                bail!("folder {folder} is not shared with {user}: nothing to undo");
            }
            format!("folder {folder} is no longer shared with {user}")
        }
        _ => bail!("not an admin command"),
    })
}

/// SIGINT, SIGTERM or SIGHUP: each stops the server gracefully.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot listen for SIGTERM and SIGHUP ({e}); stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    let (mut term, mut hup) = (term, hup);
    let name = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    };
    tracing::info!("{name}: stopping gracefully");
}
