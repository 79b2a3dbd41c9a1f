//! The admin socket: `STORE/admin.sock`, through which `lbsync-server user|token|share|unshare`
//! reach a running server (sled lets one process open the store, and the running server holds
//! it), so that `token revoke` takes effect at once.
//!
//! Only the user the server runs as (or root) may use it: the socket is made mode 0600 and each
//! connection's peer credentials are checked against the socket's owner. A request is the
//! command's arguments, NUL-separated, up to [`MAX_REQUEST`] bytes, ended by closing the write
//! side; the answer is `0` (done) or `1` (refused) followed by the text to print.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The most bytes of one request.
pub const MAX_REQUEST: u64 = 64 << 10;

/// Where the admin socket of the store in `dir` is.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

/// Serves the admin socket in the store directory `dir` for `backend` until the task is dropped.
/// A failure to set it up is logged: the server serves on without it (admin commands then need
/// it stopped).
pub async fn serve(dir: PathBuf, backend: crate::backend::Backend) {
    let path = socket_path(&dir);
    // A socket left by a server that stopped uncleanly: this process holds the store now.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "no admin socket at {} ({e}): stop the server to run user, token and share \
                 commands",
                path.display()
            );
            return;
        }
    };
    let owner = match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::metadata(&path))
    {
        Ok(m) => m.uid(),
        Err(e) => {
            tracing::warn!("cannot secure the admin socket {}: {e}", path.display());
            let _ = std::fs::remove_file(&path);
            return;
        }
    };
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let backend = backend.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, backend, owner).await {
                tracing::warn!("admin socket: {e}");
            }
        });
    }
}

async fn answer(
    mut conn: UnixStream,
    backend: crate::backend::Backend,
    owner: u32,
) -> std::io::Result<()> {
    let uid = conn.peer_cred()?.uid();
    if uid != owner && uid != 0 {
        tracing::warn!("admin socket: refused a connection from uid {uid}");
        return conn
            .write_all(b"1only the user running lbsync-server may run admin commands")
            .await;
    }
    let mut request = Vec::new();
    (&mut conn)
        .take(MAX_REQUEST)
        .read_to_end(&mut request)
        .await?;
    let args: Option<Vec<String>> = request
        .split(|&b| b == 0)
        .map(|a| String::from_utf8(a.to_vec()).ok())
        .collect();
    let result = match args {
        Some(args) => tokio::task::spawn_blocking(move || crate::cli::admin_args(&backend, args))
            .await
            .unwrap_or_else(|e| Err(format!("the command failed: {e}"))),
        None => Err("the command's arguments are not UTF-8".into()),
    };
    let reply = match result {
        Ok(text) => format!("0{text}"),
        Err(text) => format!("1{text}"),
    };
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

/// Runs an admin command in the server that holds the store at `dir`: its output, or its
/// refusal as the error; `None` when no server answers at the socket.
pub async fn call(dir: &Path, args: &[String]) -> Option<anyhow::Result<String>> {
    let mut conn = UnixStream::connect(socket_path(dir)).await.ok()?;
    Some(exchange(&mut conn, args).await)
}

async fn exchange(conn: &mut UnixStream, args: &[String]) -> anyhow::Result<String> {
    conn.write_all(args.join("\0").as_bytes()).await?;
    conn.shutdown().await?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await?;
    match reply.split_at_checked(1) {
        Some(("0", text)) => Ok(text.to_owned()),
        Some(("1", text)) => Err(anyhow::Error::msg(text.to_owned())),
        _ => anyhow::bail!("the server's admin socket gave no answer"),
    }
}
