//! An encrypted folder's key: made or joined by `init`, kept in `.lbsync/folder.key` (0600),
//! wrapped on the server with a passphrase or to age x25519 recipients, re-wrapped by
//! `passphrase`, shared by `share-key`.
//!
//! Nothing is written here before the key is known: a wrong passphrase leaves no `.lbsync/`
//! behind. A new folder's key is on disk before the server learns the folder is encrypted, so a
//! crash in between never leaves a folder whose key exists nowhere.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lbsync_crypt::{
    FolderKey, Identity, KIND_PASSPHRASE, KIND_X25519, unwrap_with_identity,
    unwrap_with_passphrase, wrap_to_recipient, wrap_with_passphrase,
};
use lbsync_proto::pb;
use tracing::info;

use crate::engine::{SyncOptions, Syncer};
use crate::error::{Error, Result};
use crate::remote::Remote;
use crate::state::{FolderLock, State, StateStore};

/// The key's file in `.lbsync/`.
pub const KEY_FILE: &str = "folder.key";

/// Said when a folder is made encrypted.
pub const LOST_PASSPHRASE_WARNING: &str = "keep the passphrase safe: the server cannot read this \
     folder, so if the passphrase is lost (and no device that holds the key is left, and no \
     share-key identity), the data is gone for good";

/// The folder key of the synced directory whose state directory is `dir`.
pub fn load_key(dir: &Path) -> Result<FolderKey> {
    let path = dir.join(KEY_FILE);
    let text = fs::read_to_string(&path).map_err(|e| {
        Error::Key(format!(
            "cannot read the folder key {}: {e}; this folder was set up encrypted: put the key \
             file back, or join the folder again with its passphrase (`lbsync-client init`)",
            path.display()
        ))
    })?;
    FolderKey::from_file_text(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
}

/// Writes the key into `dir` (mode 0600, atomically).
fn save_key(dir: &Path, key: &FolderKey) -> Result<()> {
    let path = dir.join(KEY_FILE);
    let tmp = dir.join(format!("{KEY_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        f.write_all(key.to_file_text().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(Error::io(format!(
        "writing the folder key {}",
        path.display()
    )))
}

/// Where passphrases come from: the first line of a file, or the terminal.
#[derive(Clone, Debug, Default)]
pub struct Passphrase {
    /// The file whose first line is the passphrase (else the terminal is asked).
    pub file: Option<PathBuf>,
}

impl Passphrase {
    fn from_file(f: &Path) -> Result<String> {
        let text = fs::read_to_string(f).map_err(|e| {
            Error::Usage(format!(
                "cannot read the passphrase file {}: {e}",
                f.display()
            ))
        })?;
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(Error::Usage(format!(
                "the passphrase file {} is empty: put the passphrase on its first line",
                f.display()
            )));
        }
        Ok(line.to_owned())
    }

    fn prompt(prompt: &str) -> Result<String> {
        rpassword::prompt_password(prompt).map_err(|e| {
            Error::Usage(format!(
                "cannot ask for the passphrase on the terminal ({e}): pass --key-file FILE with \
                 the passphrase on its first line"
            ))
        })
    }

    /// A passphrase that opens an existing wrap.
    pub fn existing(&self, what: &str) -> Result<String> {
        match &self.file {
            Some(f) => Self::from_file(f),
            None => Self::prompt(&format!("passphrase of {what}: ")),
        }
    }

    /// A new passphrase (asked twice on the terminal).
    pub fn new_one(&self, what: &str) -> Result<String> {
        if let Some(f) = &self.file {
            return Self::from_file(f);
        }
        let first = Self::prompt(&format!("new passphrase for {what}: "))?;
        if first.is_empty() {
            return Err(Error::Usage(
                "an empty passphrase protects nothing: nothing was changed".into(),
            ));
        }
        let again = Self::prompt("the same passphrase again: ")?;
        if first != again {
            return Err(Error::Usage(
                "the two passphrases differ: nothing was changed; run the command again".into(),
            ));
        }
        Ok(first)
    }
}

/// How `init` gets into an encrypted folder.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Make the (new, empty) folder encrypted if it is not.
    pub encrypt: bool,
    /// The passphrase.
    pub passphrase: Passphrase,
    /// Join with this age identity file instead of a passphrase.
    pub identity: Option<PathBuf>,
}

/// What `init` did.
#[derive(Clone, Debug)]
pub struct Initialized {
    /// The directory.
    pub root: PathBuf,
    /// The server folder.
    pub folder: String,
    /// The server.
    pub server: String,
    /// For an encrypted folder: the key's fingerprint.
    pub fingerprint: Option<String>,
    /// The folder was made encrypted now (a new key).
    pub made: bool,
}

impl std::fmt::Display for Initialized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.fingerprint, self.made) {
            (Some(fp), true) => write!(
                f,
                "{} is set up with the new end-to-end encrypted folder {} on {}\n\
                 key fingerprint: {fp} (compare it on every device that joins)\n\
                 WARNING: {LOST_PASSPHRASE_WARNING}",
                self.root.display(),
                self.folder,
                self.server
            ),
            (Some(fp), false) => write!(
                f,
                "{} joined the end-to-end encrypted folder {} on {}\n\
                 key fingerprint: {fp} (it must be the one the other devices show)",
                self.root.display(),
                self.folder,
                self.server
            ),
            (None, _) => write!(
                f,
                "{} is set up with folder {} on {}",
                self.root.display(),
                self.folder,
                self.server
            ),
        }?;
        write!(
            f,
            "\nrun `lbsync-client sync {}` (or `watch`) to sync it",
            self.root.display()
        )
    }
}

/// The key a passphrase opens among `wrapped`.
fn join_with_passphrase(
    folder: &str,
    wrapped: &[pb::WrappedKey],
    passphrase: &Passphrase,
) -> Result<FolderKey> {
    let w = wrapped
        .iter()
        .find(|w| w.kind == KIND_PASSPHRASE)
        .ok_or_else(|| {
            Error::Key(format!(
                "folder {folder} has no passphrase: it was shared with age identities only; \
                 join with --identity FILE"
            ))
        })?;
    let pass = passphrase.existing(&format!("folder {folder}"))?;
    match unwrap_with_passphrase(&w.age, &pass) {
        Ok(k) => Ok(k),
        Err(lbsync_crypt::Error::WrongPassphrase) => Err(Error::Key(format!(
            "wrong passphrase for folder {folder}: it does not open the folder's key; nothing was \
             written (check the passphrase, or its file, and try again)"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The key an identity opens among `wrapped`.
fn join_with_identity(folder: &str, wrapped: &[pb::WrappedKey], file: &Path) -> Result<FolderKey> {
    let text = fs::read_to_string(file).map_err(|e| {
        Error::Usage(format!(
            "cannot read the identity file {}: {e}",
            file.display()
        ))
    })?;
    let id = Identity::from_file_text(&text)?;
    let mine = id.recipient();
    // Its own wrap first (labelled with its recipient), then any other x25519 wrap.
    let mut tries: Vec<&pb::WrappedKey> =
        wrapped.iter().filter(|w| w.kind == KIND_X25519).collect();
    tries.sort_by_key(|w| w.label != mine);
    for w in tries {
        match unwrap_with_identity(&w.age, &id) {
            Ok(k) => return Ok(k),
            Err(lbsync_crypt::Error::NotThisFolder) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Key(format!(
        "folder {folder} was not shared with the identity in {} ({mine}): ask someone who has \
         the folder to run `lbsync-client share-key DIR --recipient {mine}`; nothing was written",
        file.display()
    )))
}

/// Sets `root` up to sync with a server folder: joins it if it is encrypted (with a passphrase
/// or an identity), or makes a new, empty folder encrypted with a new key (`encrypt`). Nothing
/// is written before the key is known.
pub async fn init(root: &Path, opts: &SyncOptions, how: &InitOptions) -> Result<Initialized> {
    let md = fs::metadata(root)
        .map_err(|e| Error::Usage(format!("cannot open {}: {e}", root.display())))?;
    if !md.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let root = root
        .canonicalize()
        .map_err(Error::io(format!("resolving {}", root.display())))?;
    let dir = StateStore::dir_of(&root);
    let existed = fs::symlink_metadata(&dir).is_ok();
    let old: Option<State> = StateStore::peek(&root);
    if let Some(s) = &old {
        if let Some(fp) = &s.encrypted {
            return Err(Error::Usage(format!(
                "{} is already set up with the encrypted folder {} (key {fp}): sync it",
                root.display(),
                s.folder
            )));
        }
        if s.cursor > 0 || !s.files.is_empty() {
            return Err(Error::Usage(format!(
                "{} already syncs with folder {} in the clear: set up a new directory",
                root.display(),
                s.folder
            )));
        }
    }
    let old = old.unwrap_or_default();
    let folder = opts
        .folder
        .clone()
        .or_else(|| Some(old.folder.clone()).filter(|f| !f.is_empty()))
        .unwrap_or_else(|| "default".into());
    let server = opts
        .server
        .clone()
        .or_else(|| std::env::var("LBSYNC_SERVER").ok())
        .or_else(|| Some(old.server.clone()).filter(|u| !u.is_empty()))
        .unwrap_or_else(|| crate::engine::DEFAULT_SERVER.into());
    let name = opts.device.clone().unwrap_or_else(|| {
        Some(old.device_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(crate::engine::host_name)
    });
    let mut settings = old.clone();
    let access = crate::engine::access(opts, &mut settings)?;
    let mut remote =
        Remote::connect_with(&server, &access, &folder, &format!("{name}#init")).await?;
    let keys = remote.folder_keys().await?;
    let (key, made) = if keys.generation > 0 {
        if how.encrypt {
            info!("folder {folder} is already end-to-end encrypted: joining it");
        }
        let key = match &how.identity {
            Some(file) => join_with_identity(&folder, &keys.wrapped, file)?,
            None => join_with_passphrase(&folder, &keys.wrapped, &how.passphrase)?,
        };
        (Some(key), false)
    } else if how.encrypt {
        if remote.head > 0 {
            return Err(Error::Refused {
                what: format!("make folder {folder} encrypted"),
                reason: format!(
                    "it already holds entries in the clear (journal at {}): make a new folder \
                     for encrypted data (--folder NAME)",
                    remote.head
                ),
            });
        }
        (Some(FolderKey::generate()), true)
    } else {
        (None, false)
    };
    let wrap = match (&key, made) {
        (Some(k), true) => {
            let pass = how.passphrase.new_one(&format!("folder {folder}"))?;
            Some(wrap_with_passphrase(k, &pass)?)
        }
        _ => None,
    };
    // The key is known: from here on the state is written (and removed again if this fails).
    let res = async {
        let lock = FolderLock::acquire(&root, std::time::Duration::from_secs(3))?;
        let mut state = StateStore::load(&root)?;
        let s = &mut state.state;
        s.server = server.clone();
        s.folder = folder.clone();
        s.device_name = name.clone();
        s.ca_file = settings.ca_file.clone();
        s.pin = settings.pin.clone();
        s.token_file = settings.token_file.clone();
        let fingerprint = key.as_ref().map(FolderKey::fingerprint);
        if let Some(k) = &key {
            save_key(&dir, k)?;
        }
        if let Some(age) = wrap {
            remote
                .set_folder_keys(
                    0,
                    vec![pb::WrappedKey {
                        kind: KIND_PASSPHRASE.into(),
                        label: String::new(),
                        age: age.into(),
                    }],
                )
                .await?;
        }
        state.state.encrypted = fingerprint.clone();
        state.save()?;
        drop(lock);
        Ok::<_, Error>(fingerprint)
    }
    .await;
    match res {
        Ok(fingerprint) => Ok(Initialized {
            root,
            folder,
            server,
            fingerprint,
            made,
        }),
        Err(e) => {
            if !existed {
                let _ = fs::remove_dir_all(&dir);
            }
            Err(e)
        }
    }
}

/// An encrypted folder's syncer, its key, and the server's wrapped keys.
async fn open_encrypted(
    root: &Path,
    opts: &SyncOptions,
) -> Result<(Syncer, FolderKey, pb::FolderKeys)> {
    let mut syncer = Syncer::open(root, opts).await?;
    if syncer.state.state.encrypted.is_none() {
        return Err(Error::Usage(format!(
            "{} syncs a folder that is not end-to-end encrypted: there is no key to re-wrap or \
             share",
            root.display()
        )));
    }
    let key = load_key(syncer.state.dir())?;
    let keys = syncer.remote.folder_keys().await?;
    Ok((syncer, key, keys))
}

/// What re-keying did: the generation of the folder's keys now.
#[derive(Clone, Debug)]
pub struct Rekeyed {
    /// The folder.
    pub folder: String,
    /// The keys' generation on the server.
    pub generation: u64,
    /// How many wrapped keys the folder has.
    pub wraps: usize,
}

/// `passphrase DIR`: wraps the folder key with a new passphrase, replacing the passphrase wrap
/// (x25519 wraps stay). With `old`, the old passphrase must open the server's wrap to this
/// device's key first. The data is not touched.
pub async fn change_passphrase(
    root: &Path,
    opts: &SyncOptions,
    new: &Passphrase,
    old: Option<&Passphrase>,
) -> Result<Rekeyed> {
    let (syncer, key, keys) = open_encrypted(root, opts).await?;
    let folder = syncer.remote.folder.clone();
    if let Some(old) = old {
        let theirs = join_with_passphrase(&folder, &keys.wrapped, old)?;
        if theirs.fingerprint() != key.fingerprint() {
            return Err(Error::Key(format!(
                "the old passphrase opens key {}, but this device holds {}: nothing was changed",
                theirs.fingerprint(),
                key.fingerprint()
            )));
        }
    }
    let pass = new.new_one(&format!("folder {folder}"))?;
    let age = wrap_with_passphrase(&key, &pass)?;
    let mut wrapped: Vec<pb::WrappedKey> = keys
        .wrapped
        .into_iter()
        .filter(|w| w.kind != KIND_PASSPHRASE)
        .collect();
    wrapped.push(pb::WrappedKey {
        kind: KIND_PASSPHRASE.into(),
        label: String::new(),
        age: age.into(),
    });
    set_keys(syncer, keys.generation, wrapped).await
}

/// `share-key DIR --recipient age1...`: wraps the folder key to an age x25519 recipient too
/// (replacing an earlier wrap to the same recipient).
pub async fn share_key(root: &Path, opts: &SyncOptions, recipient: &str) -> Result<Rekeyed> {
    let (syncer, key, keys) = open_encrypted(root, opts).await?;
    let recipient = recipient.trim().to_owned();
    let age = wrap_to_recipient(&key, &recipient)?;
    let mut wrapped: Vec<pb::WrappedKey> = keys
        .wrapped
        .into_iter()
        .filter(|w| !(w.kind == KIND_X25519 && w.label == recipient))
        .collect();
    wrapped.push(pb::WrappedKey {
        kind: KIND_X25519.into(),
        label: recipient,
        age: age.into(),
    });
    set_keys(syncer, keys.generation, wrapped).await
}

async fn set_keys(
    mut syncer: Syncer,
    generation: u64,
    wrapped: Vec<pb::WrappedKey>,
) -> Result<Rekeyed> {
    let now = syncer.remote.set_folder_keys(generation, wrapped).await?;
    Ok(Rekeyed {
        folder: syncer.remote.folder.clone(),
        generation: now.generation,
        wraps: now.wrapped.len(),
    })
}

/// `keygen FILE`: a new age identity in FILE (0600, never over an existing file); returns its
/// recipient.
pub fn keygen(file: &Path) -> Result<String> {
    let id = Identity::generate();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| {
            Error::Usage(format!(
                "cannot create {}: {e} (keygen never overwrites a file)",
                file.display()
            ))
        })?;
    f.write_all(id.to_file_text().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(Error::io(format!("writing {}", file.display())))?;
    Ok(id.recipient())
}
