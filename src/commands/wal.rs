//! The WAL archive of a physical job: `strata wal-push` (PostgreSQL's
//! `archive_command`) and `strata wal-fetch` (its `restore_command`).
//!
//! Each file is compressed and encrypted once, then written to every target of
//! the job under `{prefix}/{job}/wal/{timeline}/{name}{extensions}` (the
//! contract's layout). A file is never replaced: it is written only where its
//! key is free (a hard link on local disk, `If-None-Match: *` on S3), so a
//! push killed midway leaves nothing that counts and a second writer cannot
//! overwrite the first. A push of a file the archive already holds reads the
//! stored copy back: the same content is success (an archiver retrying after
//! a crash), different content is a split brain and fails loudly.
//!
//! `{prefix}/{job}/wal/archive.json` records whose archive it is (the
//! cluster's system identifier, the segment size); a segment from another
//! cluster is refused. With encryption it is sealed like the segments, so it
//! cannot be replaced by someone without the key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::app::{Strata, UnknownJob};
use crate::domain::Compression;
use crate::domain::manifest::job_prefix;
use crate::domain::timeline::{BadHistory, NoPath};
use crate::domain::wal::{self, NotWalName, SegmentError, SegmentHeader, StoredWal, WalFile};
use crate::keys::Keyring;
use crate::pipeline::PipelineError;
use crate::pipeline::encrypt::Encryptor;
use crate::pipeline::small;
use crate::storage::{StorageError, Target};

pub mod archive;
mod fetch;
mod seal;
pub mod stream;

pub use archive::{BaseRef, Continuity, End, Listing, backup_history, continuity, covers};
pub use fetch::fetch;
pub(crate) use fetch::fetch_from;
pub(crate) use seal::check_content;
use seal::{SealedFile, Sealer};

/// Largest file the archive takes (the largest segment size PostgreSQL allows).
const MAX_FILE: u64 = 1 << 30;

/// Why a push or a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    UnknownJob(#[from] UnknownJob),
    #[error("job '{0}' is not a physical job (kind: physical): it has no WAL archive")]
    NotPhysical(String),
    #[error(transparent)]
    Name(#[from] NotWalName),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    History(#[from] BadHistory),
    #[error(transparent)]
    NoPath(#[from] NoPath),
    #[error(
        "{file} comes from the cluster with system identifier {found}, but the archive on {target} belongs to {archive}: refusing to mix two clusters' WAL"
    )]
    OtherCluster {
        file: String,
        found: u64,
        archive: u64,
        target: String,
    },
    #[error(
        "{file} is already archived on {target} with different content ({key}): two servers are archiving into one job (split brain?); nothing was overwritten"
    )]
    SplitBrain {
        file: String,
        target: String,
        key: String,
    },
    #[error("the archive identity on {target} ({key}) cannot be used: {message}")]
    Identity {
        target: String,
        key: String,
        message: String,
    },
    #[error("{file} on {target} ({key}) failed its checks: {message}")]
    Corrupt {
        file: String,
        target: String,
        key: String,
        message: String,
    },
    #[error("{0} is not in the archive (searched {1})")]
    NotFound(String, String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{0}")]
    Targets(String),
}

impl WalError {
    /// The file is simply not archived (so recovery ends there), as opposed to
    /// an archive that could not be read (so recovery must stop).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(..))
    }
}

/// Whose archive it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// As text: JSON numbers lose precision past 2^53.
    #[serde(with = "as_text")]
    pub system_identifier: u64,
    pub segment_size: u32,
}

mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a push did on each target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    AlreadyArchived,
}

/// The job's archive settings, resolved once per command.
pub(crate) struct Archive<'a> {
    strata: &'a Strata,
    job: String,
    compression: Compression,
    keys: Option<Arc<Keyring>>,
    chunk_size: u32,
}

impl<'a> Archive<'a> {
    pub(crate) fn open(strata: &'a Strata, job: &str) -> Result<Self, WalError> {
        let cfg = strata.job(job)?;
        if !cfg.kind.is_physical() {
            return Err(WalError::NotPhysical(job.to_owned()));
        }
        let enc = strata.config().encryption.as_ref();
        Ok(Self {
            strata,
            job: job.to_owned(),
            compression: cfg.compression,
            keys: enc.map(|e| e.keyring.clone()),
            chunk_size: enc.map_or(0, |e| e.chunk_size),
        })
    }

    /// `{prefix}/{job}/` on `target`.
    pub(crate) fn prefix(&self, target: &str) -> String {
        job_prefix(self.strata.prefix(target), &self.job)
    }

    fn identity_key(&self, target: &str) -> String {
        format!("{}{}/archive.json", self.prefix(target), wal::WAL_DIR)
    }

    /// The key `file` is written to now (the job's compression and encryption).
    pub(crate) fn key(&self, target: &str, file: &WalFile) -> String {
        wal::object_key(
            &self.prefix(target),
            file,
            &wal::extension(self.compression, self.keys.is_some()),
        )
    }

    pub(crate) fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, WalError> {
        self.seal_with(plain, self.compression)
    }

    /// What sealing needs, owned (for a blocking thread).
    fn sealer(&self) -> Sealer {
        Sealer {
            compression: self.compression,
            keys: self.keys.clone(),
            chunk_size: self.chunk_size,
        }
    }

    fn seal_with(&self, plain: &[u8], compression: Compression) -> Result<Vec<u8>, WalError> {
        let encryptor = self
            .keys
            .as_ref()
            .map(|k| Encryptor::new(k.active(), self.chunk_size))
            .transpose()
            .map_err(PipelineError::from)?;
        Ok(small::seal(plain, compression, encryptor)?.bytes)
    }

    /// The identity recorded on `target`, or `None` when it has none yet.
    async fn identity(&self, target: &dyn Target) -> Result<Option<Identity>, WalError> {
        let key = self.identity_key(target.name());
        let stored = match crate::storage::read_all(target, &key).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let bad = |message: String| WalError::Identity {
            target: target.name().to_owned(),
            key: key.clone(),
            message,
        };
        let plain = small::unseal(&stored, Compression::None, self.keys.as_ref(), 4096)
            .map_err(|e| bad(e.to_string()))?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    /// Checks (or, on a target without one, records) whose archive this is.
    pub(crate) async fn claim(
        &self,
        target: &dyn Target,
        file: &str,
        mine: Identity,
    ) -> Result<(), WalError> {
        match self.identity(target).await? {
            Some(theirs) if theirs.system_identifier != mine.system_identifier => {
                Err(WalError::OtherCluster {
                    file: file.to_owned(),
                    found: mine.system_identifier,
                    archive: theirs.system_identifier,
                    target: target.name().to_owned(),
                })
            }
            Some(_) => Ok(()),
            None => {
                let json = serde_json::to_vec(&mine).expect("identity serializes");
                let sealed = self.seal_with(&json, Compression::None)?;
                target
                    .put_small(&self.identity_key(target.name()), sealed.into())
                    .await?;
                Ok(())
            }
        }
    }

    /// The copies of `file` on `target` (one, unless the job's compression
    /// changed between two pushes of it).
    async fn copies(
        &self,
        target: &dyn Target,
        file: &WalFile,
    ) -> Result<Vec<(String, StoredWal)>, WalError> {
        let prefix = self.prefix(target.name());
        let listed = target
            .list(&format!(
                "{}{file}",
                wal::timeline_dir(&prefix, file.timeline())
            ))
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|o| {
                let stored = StoredWal::parse(&prefix, &o.key)?;
                (stored.file == *file).then_some((o.key, stored))
            })
            .collect())
    }

    /// Reads a stored copy back and checks it: decrypted and authenticated,
    /// decompressed, a segment's header against its name and the archive's
    /// cluster.
    async fn read_copy(
        &self,
        target: &dyn Target,
        key: &str,
        stored: StoredWal,
        bytes: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, WalError> {
        let file = stored.file;
        let corrupt = |message: String| WalError::Corrupt {
            file: file.to_string(),
            target: target.name().to_owned(),
            key: key.to_owned(),
            message,
        };
        if stored.encrypted != self.keys.is_some() {
            return Err(corrupt(if stored.encrypted {
                "it is encrypted, and the config has no encryption keys".into()
            } else {
                "it is not encrypted, but the job encrypts: it was not written by strata with this config".into()
            }));
        }
        let bytes = match bytes {
            Some(b) => b,
            None => crate::storage::read_all(target, key).await?,
        };
        let plain = small::unseal(&bytes, stored.compression, self.keys.as_ref(), MAX_FILE)
            .map_err(|e| corrupt(e.to_string()))?;
        match file {
            WalFile::Segment(s) | WalFile::Partial(s) => {
                let h = SegmentHeader::check(&s, &plain, matches!(file, WalFile::Partial(_)))
                    .map_err(|e| corrupt(e.to_string()))?;
                match self.identity(target).await? {
                    Some(id) if id.system_identifier != h.system_identifier => {
                        return Err(corrupt(format!(
                            "it belongs to cluster {}, the archive to {}",
                            h.system_identifier, id.system_identifier
                        )));
                    }
                    Some(_) => {}
                    None => {
                        return Err(corrupt("the archive has no identity (archive.json)".into()));
                    }
                }
            }
            WalFile::History(tl) => {
                crate::domain::timeline::parse_history(tl, &String::from_utf8_lossy(&plain))
                    .map_err(|e| corrupt(e.to_string()))?;
            }
            WalFile::BackupLabel(..) => {}
        }
        Ok(plain)
    }

    /// What the archive already holds of `file`: the same content (`Some`),
    /// other content (a split brain), or nothing (`None`).
    async fn compare(
        &self,
        target: &dyn Target,
        file: &WalFile,
        copies: Vec<(String, StoredWal)>,
        sha: &[u8],
    ) -> Result<Option<Pushed>, WalError> {
        let mut other = None;
        for (key, stored) in copies {
            let plain = self.read_copy(target, &key, stored, None).await?;
            if digest(&SHA256, &plain).as_ref() == sha {
                return Ok(Some(Pushed::AlreadyArchived));
            }
            other.get_or_insert(key);
        }
        match other {
            Some(key) => Err(WalError::SplitBrain {
                file: file.to_string(),
                target: target.name().to_owned(),
                key,
            }),
            None => Ok(None),
        }
    }

    async fn push_to(
        &self,
        target: &dyn Target,
        file: &WalFile,
        identity: Option<Identity>,
        sha: &[u8],
        sealed: Bytes,
    ) -> Result<Pushed, WalError> {
        let name = file.to_string();
        let claimed = async {
            match identity {
                Some(mine) => self.claim(target, &name, mine).await,
                None => Ok(()),
            }
        };
        let (claimed, copies) = tokio::join!(claimed, self.copies(target, file));
        claimed?;
        if let Some(done) = self.compare(target, file, copies?, sha).await? {
            return Ok(done);
        }
        let key = self.key(target.name(), file);
        if target.put_new(&key, sealed).await?.is_some() {
            return Ok(Pushed::Stored);
        }
        // Another writer took the key between the listing and the write.
        let copies = self.copies(target, file).await?;
        self.compare(target, file, copies, sha)
            .await?
            .ok_or_else(|| {
                WalError::Targets(format!(
                    "{name} on {}: the key was taken, then gone",
                    target.name()
                ))
            })
    }
}

/// Archives the WAL file at `path` on every target of `job`. `Ok` only when
/// every target holds it (stored now, or already with the same content).
///
/// # Errors
/// Any target that does not hold it afterwards, named; a file that is not the
/// WAL file its name says, or another cluster's.
pub async fn push(
    strata: &Strata,
    job: &str,
    path: &Path,
) -> Result<Vec<(String, Pushed)>, WalError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| NotWalName(path.display().to_string()))?;
    let file = WalFile::parse(name)?;
    let archive = Archive::open(strata, job)?;
    let sealer = archive.sealer();
    let owned = path.to_owned();
    let sealed = tokio::task::spawn_blocking(move || sealer.seal_file(&owned, &file))
        .await
        .map_err(|e| WalError::Targets(format!("sealing {name} stopped: {e}")))??;
    store(strata, job, &archive, &file, sealed).await
}

/// Writes a sealed file to every target of `job`.
async fn store(
    strata: &Strata,
    job: &str,
    archive: &Archive<'_>,
    file: &WalFile,
    sealed: SealedFile,
) -> Result<Vec<(String, Pushed)>, WalError> {
    let SealedFile {
        bytes: sealed,
        sha,
        identity,
    } = sealed;
    let cfg = strata.job(job)?;
    let results = futures::future::join_all(cfg.targets.iter().map(|t| {
        let target = strata.target(t);
        let (sealed, sha) = (sealed.clone(), &sha[..]);
        async move {
            let r = archive
                .push_to(target.as_ref(), file, identity, sha, sealed)
                .await;
            (target.name().to_owned(), r)
        }
    }))
    .await;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (target, r) in results {
        match r {
            Ok(p) => done.push((target, p)),
            Err(e @ (WalError::SplitBrain { .. } | WalError::OtherCluster { .. })) => {
                return Err(e);
            }
            Err(e) => failed.push(format!("{target}: {e}")),
        }
    }
    if failed.is_empty() {
        Ok(done)
    } else {
        Err(WalError::Targets(format!(
            "{file} is not archived on every target: {}",
            failed.join("; ")
        )))
    }
}
