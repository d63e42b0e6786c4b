//! The WAL archive of a physical job: `strata wal-push` (PostgreSQL's
//! `archive_command`) and `strata wal-fetch` (its `restore_command`).
//!
//! Each file is compressed and encrypted once, then written to every target of
//! the job under `{prefix}/{job}/wal/{timeline}/{name}.{hash}{extensions}`,
//! where `hash` is the first 16 hex digits of the plain content's SHA-256. A
//! listing of `{name}.` therefore says at once whether a target already holds
//! the file, and whether with the same content: the same is success (an
//! archiver retrying after a crash), different content is a split brain and
//! fails loudly. Every write is one atomic request (a staging file renamed on
//! local disk, one PUT on S3): a push killed midway leaves nothing that counts.
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
use crate::domain::wal::{self, NotWalName, SegmentError, SegmentHeader, WalFile};
use crate::keys::Keyring;
use crate::pipeline::PipelineError;
use crate::pipeline::encrypt::Encryptor;
use crate::pipeline::small;
use crate::storage::{StorageError, Target};

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
struct Archive<'a> {
    strata: &'a Strata,
    job: String,
    compression: Compression,
    keys: Option<Arc<Keyring>>,
    chunk_size: u32,
}

impl<'a> Archive<'a> {
    fn open(strata: &'a Strata, job: &str) -> Result<Self, WalError> {
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

    fn prefix(&self, target: &str) -> String {
        job_prefix(self.strata.prefix(target), &self.job)
    }

    fn identity_key(&self, target: &str) -> String {
        format!("{}{}/archive.json", self.prefix(target), wal::WAL_DIR)
    }

    fn extension(&self) -> String {
        let mut ext = String::new();
        if let Some(c) = self.compression.extension() {
            ext.push('.');
            ext.push_str(c);
        }
        if self.keys.is_some() {
            ext.push_str(".enc");
        }
        ext
    }

    fn seal(&self, plain: &[u8], compression: Compression) -> Result<Vec<u8>, WalError> {
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
    async fn claim(&self, target: &dyn Target, file: &str, mine: Identity) -> Result<(), WalError> {
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
                let sealed = self.seal(&json, Compression::None)?;
                target
                    .put_small(&self.identity_key(target.name()), sealed.into())
                    .await?;
                Ok(())
            }
        }
    }

    /// Keys under `prefix` that are strata's copies of one file, with their hash.
    async fn copies(
        &self,
        target: &dyn Target,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, WalError> {
        Ok(target
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let hash = wal::hash_in_key(prefix, &o.key)?.to_owned();
                Some((o.key, hash))
            })
            .collect())
    }

    async fn push_to(
        &self,
        target: &dyn Target,
        file: &WalFile,
        identity: Option<Identity>,
        sha: &str,
        sealed: Bytes,
    ) -> Result<Pushed, WalError> {
        let name = file.to_string();
        if let Some(mine) = identity {
            self.claim(target, &name, mine).await?;
        }
        let prefix = wal::object_prefix(&self.prefix(target.name()), file);
        let copies = self.copies(target, &prefix).await?;
        if copies.iter().any(|(_, h)| sha.starts_with(h.as_str())) {
            return Ok(Pushed::AlreadyArchived);
        }
        if let Some((key, _)) = copies.into_iter().next() {
            return Err(WalError::SplitBrain {
                file: name,
                target: target.name().to_owned(),
                key,
            });
        }
        let key = wal::object_key(&self.prefix(target.name()), file, sha, &self.extension());
        target.put_small(&key, sealed).await?;
        Ok(Pushed::Stored)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, WalError> {
    let read = |source| WalError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_FILE {
        return Err(read(std::io::Error::other(format!(
            "{len} bytes is larger than any WAL file"
        ))));
    }
    std::fs::read(path).map_err(read)
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
    let archive = Archive::open(strata, job)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| NotWalName(path.display().to_string()))?;
    let file = WalFile::parse(name)?;
    let plain = read_file(path)?;
    let identity = match file {
        WalFile::Segment(s) | WalFile::Partial(s) => {
            let h = SegmentHeader::check(&s, &plain, matches!(file, WalFile::Partial(_)))?;
            Some(Identity {
                system_identifier: h.system_identifier,
                segment_size: h.segment_size,
            })
        }
        WalFile::BackupLabel(..) | WalFile::History(_) => None,
    };
    let sha = hex::encode(digest(&SHA256, &plain));
    let sealed = Bytes::from(archive.seal(&plain, archive.compression)?);
    drop(plain);
    let cfg = strata.job(job)?;
    let results = futures::future::join_all(cfg.targets.iter().map(|t| {
        let target = strata.target(t);
        let (archive, file, sha, sealed) = (&archive, &file, &sha, sealed.clone());
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
            "{name} is not archived on every target: {}",
            failed.join("; ")
        )))
    }
}

/// Fetches WAL file `name` of `job` into `dest` (written whole, then renamed
/// into place), from the first target (in the job's order, or only `from`)
/// that holds it. Its content is checked before it is written: decrypted and
/// authenticated, its hash against its key, and a segment's header against
/// its name and the archive's cluster.
///
/// # Errors
/// [`WalError::NotFound`] only when every target searched answered that it
/// does not hold the file; anything else when a target could not be read.
pub async fn fetch(
    strata: &Strata,
    job: &str,
    name: &str,
    dest: &Path,
    from: Option<&str>,
) -> Result<String, WalError> {
    let archive = Archive::open(strata, job)?;
    let file = WalFile::parse(name)?;
    let cfg = strata.job(job)?;
    let targets: Vec<&String> = cfg
        .targets
        .iter()
        .filter(|t| from.is_none_or(|f| f == t.as_str()))
        .collect();
    if targets.is_empty() {
        return Err(WalError::Targets(format!(
            "job '{job}' has no target '{}'",
            from.unwrap_or_default()
        )));
    }
    let mut errors = Vec::new();
    for t in &targets {
        let target = strata.target(t);
        match fetch_from(&archive, target.as_ref(), &file).await {
            Ok(Some(plain)) => {
                write_atomically(dest, &plain)?;
                return Ok(target.name().to_owned());
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("{t}: {e}")),
        }
    }
    let searched = targets
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if errors.is_empty() {
        Err(WalError::NotFound(name.to_owned(), searched))
    } else {
        Err(WalError::Targets(format!(
            "{name} could not be read from the archive: {}",
            errors.join("; ")
        )))
    }
}

async fn fetch_from(
    archive: &Archive<'_>,
    target: &dyn Target,
    file: &WalFile,
) -> Result<Option<Vec<u8>>, WalError> {
    let prefix = wal::object_prefix(&archive.prefix(target.name()), file);
    let Some((key, hash)) = archive.copies(target, &prefix).await?.into_iter().next() else {
        return Ok(None);
    };
    let corrupt = |message: String| WalError::Corrupt {
        file: file.to_string(),
        target: target.name().to_owned(),
        key: key.clone(),
        message,
    };
    let stored = crate::storage::read_all(target, &key).await?;
    // The extensions say how it was written; a job may have changed its
    // compression since.
    let compression = if key.contains(".zst") {
        Compression::Zstd(3)
    } else if key.contains(".gz") {
        Compression::Gzip(6)
    } else {
        Compression::None
    };
    if key.ends_with(".enc") != archive.keys.is_some() {
        return Err(corrupt(
            "written with a different encryption setting than the job has now".into(),
        ));
    }
    let plain = small::unseal(&stored, compression, archive.keys.as_ref(), MAX_FILE)
        .map_err(|e| corrupt(e.to_string()))?;
    let sha = hex::encode(digest(&SHA256, &plain));
    if !sha.starts_with(&hash) {
        return Err(corrupt(format!("content hashes to {}", &sha[..16])));
    }
    if let Some(seg) = file.segment() {
        let h = SegmentHeader::check(&seg, &plain, matches!(file, WalFile::Partial(_)))
            .map_err(|e| corrupt(e.to_string()))?;
        match archive.identity(target).await? {
            Some(id) if id.system_identifier != h.system_identifier => {
                return Err(corrupt(format!(
                    "it belongs to cluster {}, the archive to {}",
                    h.system_identifier, id.system_identifier
                )));
            }
            Some(_) => {}
            None => return Err(corrupt("the archive has no identity (archive.json)".into())),
        }
    }
    Ok(Some(plain))
}

fn write_atomically(dest: &Path, data: &[u8]) -> Result<(), WalError> {
    use std::io::Write;
    let err = |source| WalError::Write {
        path: dest.to_owned(),
        source,
    };
    let name = dest
        .file_name()
        .map_or_else(Default::default, |n| n.to_os_string());
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(".strata-tmp");
    let tmp = dest.with_file_name(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, dest).map_err(err)?;
    Ok(())
}

/// The segment names archived for `job` on `target` on `timeline`.
async fn archived_segments(
    strata: &Strata,
    job: &str,
    target: &dyn Target,
    timeline: u32,
) -> Result<std::collections::BTreeSet<String>, WalError> {
    let dir = format!(
        "{}{}/{timeline:08X}/",
        job_prefix(strata.prefix(target.name()), job),
        wal::WAL_DIR
    );
    Ok(target
        .list(&dir)
        .await?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.strip_prefix(&dir)?.split('.').next()?.to_owned();
            matches!(WalFile::parse(&name), Ok(WalFile::Segment(_))).then_some(name)
        })
        .collect())
}

/// The first segment between `from` and `to` (WAL positions, inclusive) on
/// `timeline` that `target` does not hold, if any.
///
/// # Errors
/// The target could not be listed.
pub async fn first_missing(
    strata: &Strata,
    job: &str,
    target: &dyn Target,
    timeline: u32,
    (from, to): (u64, u64),
    segment_size: u32,
) -> Result<Option<String>, WalError> {
    let have = archived_segments(strata, job, target, timeline).await?;
    let size = u64::from(segment_size);
    Ok((from / size..=to / size)
        .map(|n| wal::SegmentName::from_number(timeline, n, segment_size).to_string())
        .find(|name| !have.contains(name)))
}

/// Waits (up to two minutes, for the archiver to catch up) until `target`
/// holds every segment of the base backup between `points.start` and
/// `points.stop`.
///
/// # Errors
/// A segment is still missing then (named), or the target cannot be listed.
pub async fn covers(
    strata: &Strata,
    job: &str,
    target: &str,
    points: &crate::pg::BaseBackupPoints,
    segment_size: u32,
) -> Result<(), WalError> {
    let t = strata.target(target);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let range = (points.start, points.stop);
        match first_missing(
            strata,
            job,
            t.as_ref(),
            points.timeline,
            range,
            segment_size,
        )
        .await?
        {
            None => return Ok(()),
            Some(name) if std::time::Instant::now() >= deadline => {
                return Err(WalError::Targets(format!(
                    "the base backup needs WAL segment {name}, which is not archived on {target}: check archive_command (`strata wal-push {job} %p`) and pg_stat_archiver"
                )));
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
    }
}

/// The newest segment `target` holds for `job` on `timeline`.
///
/// # Errors
/// The target could not be listed.
pub async fn newest_segment(
    strata: &Strata,
    job: &str,
    target: &dyn Target,
    timeline: u32,
) -> Result<Option<wal::SegmentName>, WalError> {
    Ok(archived_segments(strata, job, target, timeline)
        .await?
        .last()
        .and_then(|n| WalFile::parse(n).ok()?.segment()))
}

/// The start and end of the base backup labelled `label`, from the backup
/// history file the server archived when it ended (the first target of the
/// job that holds it; the newest files are read first).
///
/// # Errors
/// No target holds such a file, or one could not be read.
pub async fn backup_history(
    strata: &Strata,
    job: &str,
    label: &str,
) -> Result<crate::pg::BaseBackupPoints, WalError> {
    let archive = Archive::open(strata, job)?;
    let cfg = strata.job(job)?;
    let mut errors = Vec::new();
    for t in &cfg.targets {
        let target = strata.target(t);
        let dir = format!("{}{}/", archive.prefix(t), wal::WAL_DIR);
        let listed = match target.list(&dir).await {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("{t}: {e}"));
                continue;
            }
        };
        let mut labels: Vec<WalFile> = listed
            .iter()
            .filter_map(|o| {
                let name = o.key.rsplit('/').next()?;
                let end = name.find(".backup.")? + ".backup".len();
                WalFile::parse(&name[..end]).ok()
            })
            .collect();
        labels.sort();
        for file in labels.iter().rev() {
            match fetch_from(&archive, target.as_ref(), file).await {
                Ok(Some(text)) => {
                    let text = String::from_utf8_lossy(&text);
                    if let Some(p) = crate::pg::BaseBackupPoints::parse(&text) {
                        if p.label == label {
                            return Ok(p);
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("{t}: {e}")),
            }
        }
    }
    Err(WalError::Targets(format!(
        "the archive holds no backup history file for '{label}' (the server writes one when a base backup ends and archives it with archive_command){}",
        if errors.is_empty() {
            String::new()
        } else {
            format!(": {}", errors.join("; "))
        }
    )))
}
