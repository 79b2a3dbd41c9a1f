//! The cluster services a test may use, found through the environment:
//!
//! - `LBSYNC_TEST_METADATA`: a `postgres://` URL to a server where we may create databases.
//!   [`postgres()`] makes a fresh database per test and drops it when the [`PgService`] drops.
//! - `LBSYNC_TEST_STORE`: an `s3://BUCKET[/PREFIX]?endpoint=..&region=..` URL, with the
//!   credentials in `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. [`s3`] appends a fresh random
//!   prefix, so that tests never see each other's objects.
//! - `LBSYNC_CLUSTER_DIR`: the dev cluster's directory, for the tests that stop and start a Garage
//!   node ([`node_down`]).
//!
//! `eval "$(scripts/dev-cluster start DIR)"` sets all of them. The names differ from the
//! `LBSYNC_STORE`/`LBSYNC_METADATA` that the server reads, so that a developer's exported store
//! never becomes a test's.
//!
//! The rule for a missing service: outside CI the test is skipped with a reason on stderr; with
//! `CI=true` it panics, because CI starts the services and a skip there would hide a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// The PostgreSQL server the tests may create databases on.
pub const METADATA_VAR: &str = "LBSYNC_TEST_METADATA";
/// The S3 store the tests may write under.
pub const STORE_VAR: &str = "LBSYNC_TEST_STORE";
/// The dev cluster's directory.
pub const CLUSTER_DIR_VAR: &str = "LBSYNC_CLUSTER_DIR";

/// A database of the test's own on the PostgreSQL server; dropped (with its connections) on drop.
#[derive(Debug)]
pub struct PgService {
    /// `postgres://` URL of the database.
    pub url: String,
    /// The server URL we connected to to create the database, and connect to again to drop it.
    admin_url: String,
    name: String,
}

impl Drop for PgService {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = off_runtime(move || drop_database(&admin_url, &name));
        if let Err(e) = dropped {
            // A leftover database is harmless (it lives in the cluster's directory): no panic in drop.
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

impl PgService {
    /// A copy of the database as it is now (`CREATE DATABASE … TEMPLATE`), dropped when the
    /// [`PgCopy`] drops: a backup to [`restore`](Self::restore) later. A template may have no
    /// sessions, so the sessions still connected are ended first (a stopped server's pool may
    /// take a moment to close): stop whatever uses the database before.
    ///
    /// # Panics
    /// When the server refuses to copy the database.
    pub fn save(&self) -> PgCopy {
        // A name of its own (within PostgreSQL's 63 bytes): a new copy may be made before an
        // older one drops.
        let stem: String = self.name.chars().take(50).collect();
        let copy = PgCopy {
            admin_url: self.admin_url.clone(),
            name: format!("{stem}_c{}", random_hex(4)),
        };
        let made = off_runtime({
            let (admin_url, from, to) =
                (self.admin_url.clone(), self.name.clone(), copy.name.clone());
            move || copy_database(&admin_url, &from, &to)
        });
        if let Err(e) = made {
            panic!(
                "copying database {} to {} failed: {e}",
                self.name, copy.name
            );
        }
        copy
    }

    /// Puts the database back as it was when `copy` was made: it is dropped (its sessions
    /// ended) and made again from the copy, under the same name, so that [`url`](Self::url)
    /// reaches the restored one. The copy stays, for another restore.
    ///
    /// # Panics
    /// When the server refuses to drop or to copy a database.
    pub fn restore(&self, copy: &PgCopy) {
        let (admin_url, from, to) = (self.admin_url.clone(), copy.name.clone(), self.name.clone());
        let restored = off_runtime(move || {
            drop_database(&admin_url, &to)?;
            copy_database(&admin_url, &from, &to)
        });
        if let Err(e) = restored {
            panic!(
                "restoring database {} from {} failed: {e}",
                self.name, copy.name
            );
        }
    }
}

/// A copy of a [`PgService`]'s database ([`PgService::save`]); dropped on drop.
#[derive(Debug)]
pub struct PgCopy {
    admin_url: String,
    name: String,
}

impl Drop for PgCopy {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        if let Err(e) = off_runtime(move || drop_database(&admin_url, &name)) {
            eprintln!("warning: could not drop test database {}: {e}", self.name);
        }
    }
}

fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let mut client = connect(admin_url)?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .map_err(|e| described(&e))
}

/// `CREATE DATABASE to TEMPLATE from`. A template may have no sessions, and a pool that is
/// closing (or keeps its minimum of idle connections) may connect again right after its sessions
/// are ended: so `from` refuses connections meanwhile (`ALLOW_CONNECTIONS false`, which binds the
/// superuser too), its sessions are ended, the copy is made, and `from` takes connections again.
fn copy_database(admin_url: &str, from: &str, to: &str) -> Result<(), String> {
    let mut client = connect(admin_url)?;
    let allow = |client: &mut postgres::Client, yes: bool| {
        client
            .batch_execute(&format!(
                "ALTER DATABASE \"{from}\" ALLOW_CONNECTIONS {yes}"
            ))
            .map_err(|e| described(&e))
    };
    allow(&mut client, false)?;
    let copied = (|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&from],
                )
                .map_err(|e| described(&e))?;
            match client.batch_execute(&format!("CREATE DATABASE \"{to}\" TEMPLATE \"{from}\"")) {
                // A terminated session takes a moment to go.
                Err(e)
                    if e.code() == Some(&postgres::error::SqlState::OBJECT_IN_USE)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                done => return done.map_err(|e| described(&e)),
            }
        }
    })();
    let allowed = allow(&mut client, true);
    copied.and(allowed)
}

fn connect(admin_url: &str) -> Result<postgres::Client, String> {
    postgres::Client::connect(admin_url, postgres::NoTls).map_err(|e| described(&e))
}

/// A PostgreSQL error with what the server said (`postgres::Error` displays only "db error").
fn described(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {}: {}{}",
            db.severity(),
            db.code().code(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// A prefix of the test's own in the S3 store.
#[derive(Debug, Clone)]
pub struct S3Service {
    /// `s3://BUCKET/PREFIX/t-<random>?...` URL, with the options of `LBSYNC_TEST_STORE`.
    pub url: String,
}

/// A fresh database on the PostgreSQL server of `LBSYNC_TEST_METADATA`, or `None` (after saying so
/// on stderr) when that is unset outside CI. `test` names the test in messages and in the
/// database's name.
///
/// # Panics
/// When the variable is unset and `CI=true`, or when the server refuses to create the database.
pub fn postgres(test: &str) -> Option<PgService> {
    let admin_url = configured(test, METADATA_VAR, "PostgreSQL")?;
    let name = database_name(test, &random_hex(8));
    let url = with_database(&admin_url, &name).unwrap_or_else(|e| panic!("{METADATA_VAR}: {e}"));
    let create = {
        let (admin_url, name) = (admin_url.clone(), name.clone());
        off_runtime(move || {
            connect(&admin_url)?
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .map_err(|e| described(&e))
        })
    };
    if let Err(e) = create {
        panic!("{test}: creating database {name} on {METADATA_VAR} failed: {e}");
    }
    Some(PgService {
        url,
        admin_url,
        name,
    })
}

/// The S3 store of `LBSYNC_TEST_STORE` under a fresh prefix, or `None` (after saying so on
/// stderr) when that is unset outside CI.
///
/// # Panics
/// When the variable is unset and `CI=true`, when it is not an `s3://` URL, or when the AWS
/// credentials are missing from the environment.
pub fn s3(test: &str) -> Option<S3Service> {
    let base = configured(test, STORE_VAR, "S3")?;
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
            panic!(
                "{test}: {STORE_VAR} is set but {var} is not (the dev cluster's exports set both)"
            );
        }
    }
    let url = with_prefix(&base, &format!("t-{}", random_hex(8)))
        .unwrap_or_else(|e| panic!("{STORE_VAR}: {e}"));
    Some(S3Service { url })
}

/// The dev cluster's directory (`LBSYNC_CLUSTER_DIR`), if one is running.
pub fn cluster_dir() -> Option<PathBuf> {
    std::env::var_os(CLUSTER_DIR_VAR)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Stops Garage node `n` (1, 2 or 3) of the dev cluster. Prefer [`node_down`], which starts it
/// again however the test ends. Node 1 serves the S3 endpoint of `LBSYNC_TEST_STORE`: a test that
/// wants the store to go on stops 2 or 3.
///
/// # Panics
/// When there is no cluster directory or the script fails.
pub fn stop_node(n: u8) {
    dev_cluster("stop-node", n);
}

/// Starts Garage node `n` of the dev cluster again and waits until it is healthy.
///
/// # Panics
/// When there is no cluster directory or the script fails.
pub fn start_node(n: u8) {
    dev_cluster("start-node", n);
}

/// Garage node `n`, stopped until this drops. One node at a time in this process: with two of three
/// down the store has no quorum, and every other test using it would fail.
#[derive(Debug)]
pub struct NodeDown {
    n: u8,
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// Stops Garage node `n` until the returned guard drops.
///
/// # Panics
/// When there is no cluster directory or the script fails.
pub fn node_down(n: u8) -> NodeDown {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    // A test that panicked while holding it has restarted its node in drop: the lock is still good.
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    stop_node(n);
    NodeDown {
        n,
        _one_at_a_time: guard,
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        start_node(self.n);
    }
}

/// The script that runs the cluster, in this repository.
pub fn dev_cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-cluster")
}

fn dev_cluster(command: &str, n: u8) {
    let Some(dir) = cluster_dir() else {
        panic!("{command} {n}: {CLUSTER_DIR_VAR} is not set (the dev cluster's exports set it)");
    };
    let script = dev_cluster_script();
    let status = Command::new(&script)
        .arg(command)
        .arg(&dir)
        .arg(n.to_string())
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        status.success(),
        "{} {command} {} {n}: {status}",
        script.display(),
        dir.display()
    );
}

/// What to do about a service, from its variable's value and whether this is CI.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    Use(String),
    Skip(String),
    MissingInCi(String),
}

fn lookup(test: &str, var: &str, what: &str, value: Option<String>, ci: bool) -> Lookup {
    match value.filter(|v| !v.is_empty()) {
        Some(v) => Lookup::Use(v),
        None if ci => Lookup::MissingInCi(format!(
            "{test}: {var} is not set, but CI=true: CI must run this test against {what} \
             (.ci/run starts the services with scripts/dev-cluster)"
        )),
        None => Lookup::Skip(format!(
            "skipping {test}: set {var} (eval \"$(scripts/dev-cluster start DIR)\" sets it) \
             to run it against {what}"
        )),
    }
}

fn configured(test: &str, var: &str, what: &str) -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match lookup(test, var, what, std::env::var(var).ok(), ci) {
        Lookup::Use(v) => Some(v),
        Lookup::Skip(why) => {
            eprintln!("{why}");
            None
        }
        Lookup::MissingInCi(why) => panic!("{why}"),
    }
}

/// `t_<test>_<suffix>`: lowercase letters, digits and `_`, within PostgreSQL's 63 bytes.
fn database_name(test: &str, suffix: &str) -> String {
    let test: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("t_{test}_{suffix}")
}

/// `url` with its database (the path) replaced by `db`.
fn with_database(url: &str, db: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| format!("not a postgres:// URL: {url}"))?;
    let scheme = &url[..url.len() - rest.len()];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    if authority.is_empty() {
        return Err(format!("no host in {url}"));
    }
    let query = after.find('?').map_or("", |q| &after[q..]);
    Ok(format!("{scheme}{authority}/{db}{query}"))
}

/// `url` (`s3://BUCKET[/PREFIX][?OPTIONS]`) with `/component` appended to its prefix.
fn with_prefix(url: &str, component: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("not an s3:// URL: {url}"))?;
    let (path, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let path = path.trim_end_matches('/');
    if path.is_empty() || path.starts_with('/') {
        return Err(format!("no bucket in {url}"));
    }
    Ok(format!("s3://{path}/{component}{query}"))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS has a random number generator");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `f` on a thread of its own. The sync `postgres` client runs a Tokio runtime inside, which
/// panics when started from a runtime's thread, as in a `#[tokio::test]`.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Output;

    #[test]
    fn database_replaces_the_path_and_keeps_the_rest() {
        let db = "t_x_00";
        for (url, want) in [
            (
                "postgres://lbsync:pw@127.0.0.1:5432/lbsync",
                "postgres://lbsync:pw@127.0.0.1:5432/t_x_00",
            ),
            (
                "postgresql://u@h/db?sslmode=disable",
                "postgresql://u@h/t_x_00?sslmode=disable",
            ),
            ("postgres://u@h:1", "postgres://u@h:1/t_x_00"),
            (
                "postgres://u@h?connect_timeout=5",
                "postgres://u@h/t_x_00?connect_timeout=5",
            ),
        ] {
            assert_eq!(with_database(url, db).as_deref(), Ok(want), "{url}");
        }
        assert!(with_database("mysql://u@h/db", db).is_err());
        assert!(with_database("postgres:///db", db).is_err());
    }

    #[test]
    fn database_names_are_safe_identifiers() {
        let name = database_name(
            "Two Servers::Converge-in-real-time, and then some more words",
            "ab12",
        );
        assert_eq!(name, "t_two_servers__converge_in_real_time__and__ab12");
        assert!(name.len() <= 63);
        let long = database_name(&"x".repeat(200), &random_hex(8));
        assert!(long.len() <= 63, "{long}");
    }

    #[test]
    fn prefix_is_appended_before_the_options() {
        let endpoint = "?endpoint=http://127.0.0.1:3900&region=garage";
        for (url, want) in [
            (
                format!("s3://lbsync/store{endpoint}"),
                format!("s3://lbsync/store/t-1{endpoint}"),
            ),
            (
                format!("s3://lbsync/store/{endpoint}"),
                format!("s3://lbsync/store/t-1{endpoint}"),
            ),
            (
                format!("s3://lbsync{endpoint}"),
                format!("s3://lbsync/t-1{endpoint}"),
            ),
            ("s3://b/a/b".to_owned(), "s3://b/a/b/t-1".to_owned()),
        ] {
            assert_eq!(with_prefix(&url, "t-1"), Ok(want), "{url}");
        }
        assert!(with_prefix("http://lbsync/store", "t-1").is_err());
        assert!(with_prefix("s3://?region=x", "t-1").is_err());
        assert!(with_prefix("s3:///x", "t-1").is_err());
    }

    #[test]
    fn skip_rule() {
        let found = lookup(
            "t",
            METADATA_VAR,
            "PostgreSQL",
            Some("postgres://h/db".into()),
            true,
        );
        assert_eq!(found, Lookup::Use("postgres://h/db".into()));
        assert_eq!(
            lookup("t", METADATA_VAR, "PostgreSQL", None, false),
            Lookup::Skip(
                "skipping t: set LBSYNC_TEST_METADATA (eval \"$(scripts/dev-cluster start DIR)\" \
                 sets it) to run it against PostgreSQL"
                    .into()
            )
        );
        // Empty is unset: `LBSYNC_TEST_STORE= cargo test` skips rather than failing on a bad URL.
        assert!(matches!(
            lookup("t", STORE_VAR, "S3", Some(String::new()), false),
            Lookup::Skip(_)
        ));
        assert!(matches!(
            lookup("t", STORE_VAR, "S3", None, true),
            Lookup::MissingInCi(_)
        ));
    }

    /// Set in the child process that runs [`child_asks_for_both`] for real.
    const CHILD: &str = "LBSYNC_TESTSUPPORT_CHILD";

    /// This test binary again, running only [`child_asks_for_both`], without the services'
    /// variables and with `envs`. (Setting variables in this process would race other tests.)
    fn child(envs: &[(&str, &str)]) -> Output {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "services::tests::child_asks_for_both",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env_remove("CI")
            .env_remove(METADATA_VAR)
            .env_remove(STORE_VAR)
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    }

    #[test]
    fn child_asks_for_both() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        assert!(postgres("child").is_none());
        assert!(s3("child").is_none());
    }

    #[test]
    fn without_services_tests_skip_and_say_why() {
        let out = child(&[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("skipping child: set LBSYNC_TEST_METADATA"),
            "{stderr}"
        );
        assert!(
            stderr.contains("skipping child: set LBSYNC_TEST_STORE"),
            "{stderr}"
        );
    }

    #[test]
    fn without_services_ci_fails() {
        let out = child(&[("CI", "true")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("child: LBSYNC_TEST_METADATA is not set, but CI=true"),
            "{stderr}"
        );
    }

    /// Against the real server when there is one: a copy keeps what the database held when it
    /// was made, even with a session still connected then; a restore brings that back under
    /// the same URL, and the copy goes when it drops.
    #[test]
    fn postgres_copy_restores_the_database() {
        let Some(pg) = postgres("postgres_copy_restores_the_database") else {
            return;
        };
        let mut client = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
        client
            .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
            .unwrap();
        let copy = pg.save();
        assert!(
            client.query_one("SELECT 1", &[]).is_err(),
            "the session in the way was not ended"
        );
        let mut client = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
        client.batch_execute("INSERT INTO t VALUES (2)").unwrap();
        drop(client);
        pg.restore(&copy);
        let mut client = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
        let rows = client.query("SELECT v FROM t ORDER BY v", &[]).unwrap();
        let values: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(values, [1]);
        drop(client);
        let (admin_url, name) = (copy.admin_url.clone(), copy.name.clone());
        drop(copy);
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls).unwrap();
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "the copy was not dropped");
    }

    /// Against the real server when there is one: the database exists, is the test's own, and
    /// goes with the service even while a connection to it is open. From a runtime's thread, as
    /// the tests of the async backends will call it.
    #[tokio::test]
    async fn postgres_database_comes_and_goes() {
        let Some(pg) = postgres("postgres_database_comes_and_goes") else {
            return;
        };
        let (connected_tx, connected) = std::sync::mpsc::channel();
        let (dropped, dropped_rx) = std::sync::mpsc::channel::<()>();
        let url = pg.url.clone();
        let holder = std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let row = client.query_one("SELECT current_database()", &[]).unwrap();
            connected_tx.send(row.get::<_, String>(0)).unwrap();
            dropped_rx.recv().unwrap();
            client.query_one("SELECT 1", &[]).is_err()
        });
        let name = connected.recv().unwrap();
        assert!(
            name.starts_with("t_postgres_database_comes_and_goes_"),
            "{name}"
        );
        assert_eq!(pg.name, name);

        let admin_url = pg.admin_url.clone();
        drop(pg);
        dropped.send(()).unwrap();
        assert!(
            holder.join().unwrap(),
            "the open connection was not ended by the drop"
        );
        let left = off_runtime(move || {
            let mut client = postgres::Client::connect(&admin_url, postgres::NoTls).unwrap();
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_database WHERE datname = $1",
                    &[&name],
                )
                .unwrap();
            row.get::<_, i64>(0)
        });
        assert_eq!(left, 0);
    }
}
