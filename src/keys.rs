//! Master keys: loading, permission checks and the keyring used for rotation.
//!
//! A master key is 32 random bytes stored base64-encoded in a file that only the
//! daemon's user may read. Several keys may be configured; new backups use the
//! active one and any configured key can decrypt (the key id is in each header).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretBox};

/// Length of a master key in bytes.
pub const KEY_LEN: usize = 32;

/// Errors while reading, checking or creating key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is readable or writable by group/others (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {path} does not hold {KEY_LEN} base64-encoded bytes")]
    Malformed { path: PathBuf },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("the system random number generator failed")]
    Random,
}

/// A 32-byte master key. Its bytes never appear in `Debug` output.
pub struct MasterKey {
    id: String,
    bytes: SecretBox<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("bytes", &"[redacted]")
            .finish()
    }
}

impl MasterKey {
    /// Builds a key from raw bytes (tests and the `decrypt` command).
    pub fn from_bytes(id: impl Into<String>, bytes: [u8; KEY_LEN]) -> Self {
        Self {
            id: id.into(),
            bytes: SecretBox::new(Box::new(bytes)),
        }
    }

    /// Reads a key file, refusing files that group or others can access.
    ///
    /// # Errors
    /// Missing or unreadable file, loose permissions, or content that is not 32
    /// base64-encoded bytes.
    pub fn load(id: impl Into<String>, path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(io)?;
        let decoded = B64.decode(text.trim()).map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
        })?;
        let bytes: [u8; KEY_LEN] = decoded.try_into().map_err(|_| KeyError::Malformed {
            path: path.to_owned(),
        })?;
        Ok(Self::from_bytes(id, bytes))
    }

    /// The key's configured name, written into every header it encrypts.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        self.bytes.expose_secret()
    }
}

/// Writes a new random key to `path` with mode 0600, never overwriting.
///
/// # Errors
/// The file exists, its directory is missing, or the random generator failed.
pub fn generate(path: &Path) -> Result<(), KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyError::Random)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => KeyError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
    let mut text = B64.encode(bytes);
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })
}

/// All configured keys, with the one new backups use.
#[derive(Debug)]
pub struct Keyring {
    active: String,
    keys: BTreeMap<String, MasterKey>,
}

impl Keyring {
    /// Builds a keyring; `active` must be one of `keys`.
    pub fn new(active: &str, keys: Vec<MasterKey>) -> Option<Self> {
        let keys: BTreeMap<_, _> = keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        keys.contains_key(active).then(|| Self {
            active: active.to_owned(),
            keys,
        })
    }

    /// The key new backups are encrypted with.
    pub fn active(&self) -> &MasterKey {
        &self.keys[&self.active]
    }

    /// The key with this id, if configured.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_loads_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        MasterKey::load("k", &path).unwrap();
        assert!(matches!(generate(&path), Err(KeyError::Exists { .. })));
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        generate(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load("k", &path).unwrap_err();
        assert!(
            matches!(err, KeyError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn missing_and_malformed_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.key");
        assert!(matches!(
            MasterKey::load("k", &missing),
            Err(KeyError::Io { .. })
        ));
        let short = dir.path().join("short.key");
        fs::write(&short, B64.encode([1u8; 16])).unwrap();
        fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            MasterKey::load("k", &short),
            Err(KeyError::Malformed { .. })
        ));
    }

    #[test]
    fn debug_output_hides_key_bytes() {
        let key = MasterKey::from_bytes("k1", [0xAB; KEY_LEN]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab, "));
        assert!(shown.contains("redacted"));
    }
}
