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
pub mod stream;

pub use archive::{BaseRef, Continuity, End, Listing, backup_history, continuity, covers};

/// Largest file the archive takes (the largest segment size PostgreSQL allows).
const MAX_FILE: u64 = 1 << 30;
/// Bytes of a WAL file compressed as one frame (the pipeline's block).
const BLOCK: usize = crate::pipeline::BLOCK;

/// The job's compression and keys, to seal a file on a blocking thread.
struct Sealer {
    compression: Compression,
    keys: Option<Arc<Keyring>>,
    chunk_size: u32,
}

impl Sealer {
    /// Reads the WAL file `file` at `path` block by block: hashes it, checks
    /// that it is what its name says, compresses its blocks side by side on
    /// every core (one zstd frame or gzip member each) and encrypts them. Only
    /// a few blocks of the file are in memory at once.
    fn seal_file(&self, path: &Path, file: &WalFile) -> Result<SealedFile, WalError> {
        use std::io::Read;
        let read = |source| WalError::Read {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(read)?;
        let len = f.metadata().map_err(read)?.len();
        if len > MAX_FILE {
            return Err(read(std::io::Error::other(format!(
                "{len} bytes is larger than any WAL file"
            ))));
        }
        let mut sha = ring::digest::Context::new(&SHA256);
        let mut encryptor = self
            .keys
            .as_ref()
            .map(|k| Encryptor::new(k.active(), self.chunk_size))
            .transpose()
            .map_err(PipelineError::from)?;
        let mut out = Vec::with_capacity(usize::try_from(len / 2).unwrap_or(0) + 256);
        let width = crate::pipeline::cpu::cores().max(1);
        let mut identity = None;
        let mut first = true;
        loop {
            let mut blocks = Vec::with_capacity(width);
            for _ in 0..width {
                let mut block = Vec::with_capacity(BLOCK);
                (&mut f)
                    .take(BLOCK as u64)
                    .read_to_end(&mut block)
                    .map_err(read)?;
                if block.is_empty() {
                    break;
                }
                blocks.push(block);
            }
            if first {
                let start = blocks.first().map_or(&[][..], Vec::as_slice);
                identity = check_start(file, start, usize::try_from(len).unwrap_or(usize::MAX))?;
                first = false;
            }
            if blocks.is_empty() {
                break;
            }
            for b in &blocks {
                sha.update(b);
            }
            let compression = self.compression;
            let packed: Vec<std::io::Result<Vec<u8>>> = {
                use rayon::prelude::*;
                blocks
                    .par_iter()
                    .map(|b| {
                        let mut packed = Vec::with_capacity(b.len() / 2);
                        compression.compress_block(b, &mut packed).map(|()| packed)
                    })
                    .collect()
            };
            for p in packed {
                let p = p.map_err(PipelineError::Compress)?;
                match &mut encryptor {
                    Some(enc) => enc.update(&p, &mut out).map_err(PipelineError::from)?,
                    None => out.extend_from_slice(&p),
                }
            }
        }
        if let Some(enc) = encryptor {
            enc.finish(&mut out).map_err(PipelineError::from)?;
        }
        Ok(SealedFile {
            bytes: Bytes::from(out),
            sha: sha.finish().as_ref().try_into().expect("32 bytes"),
            identity,
        })
    }
}

/// A WAL file ready for the archive.
struct SealedFile {
    bytes: Bytes,
    /// SHA-256 of the plain content.
    sha: [u8; 32],
    /// Whose cluster a segment belongs to (none for other files).
    identity: Option<Identity>,
}

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

/// Checks that `plain` is what `file`'s name says: a segment's page header
/// (its identity is returned), a history file that parses.
///
/// # Errors
/// It is not.
pub(crate) fn check_content(file: &WalFile, plain: &[u8]) -> Result<Option<Identity>, WalError> {
    match file {
        WalFile::Segment(s) | WalFile::Partial(s) => {
            let h = SegmentHeader::check(s, plain, matches!(file, WalFile::Partial(_)))?;
            Ok(Some(Identity {
                system_identifier: h.system_identifier,
                segment_size: h.segment_size,
            }))
        }
        WalFile::History(tl) => {
            crate::domain::timeline::parse_history(*tl, &String::from_utf8_lossy(plain))?;
            Ok(None)
        }
        WalFile::BackupLabel(..) => Ok(None),
    }
}

/// [`check_content`] from a file's first bytes and its length.
fn check_start(file: &WalFile, start: &[u8], len: usize) -> Result<Option<Identity>, WalError> {
    match file {
        WalFile::Segment(s) | WalFile::Partial(s) => {
            let h = SegmentHeader::read(s, start)?;
            h.check_len(s, len, matches!(file, WalFile::Partial(_)))?;
            Ok(Some(Identity {
                system_identifier: h.system_identifier,
                segment_size: h.segment_size,
            }))
        }
        // History and backup label files are small: `start` is all of it.
        WalFile::History(_) | WalFile::BackupLabel(..) if start.len() == len => {
            check_content(file, start)
        }
        _ => Err(WalError::Read {
            path: file.to_string().into(),
            source: std::io::Error::other(format!("{len} bytes is too large for a {file}")),
        }),
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

/// Fetches WAL file `name` of `job` into `dest` (written whole, then renamed
/// into place), from the first target (in the job's order, or only `from`)
/// that holds it. Its content is checked before it is written: decrypted and
/// authenticated, and a segment's header against its name and the archive's
/// cluster. A segment that is not archived whole but whose `.partial` is the
/// newest file of its timeline (the one a promotion or the streaming source
/// left) is served from that, padded to a whole segment: recovery then
/// replays what it holds and ends there.
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
    if let (WalFile::Segment(s), true) = (file, errors.is_empty()) {
        for t in &targets {
            let target = strata.target(t);
            match fetch_live_partial(&archive, target.as_ref(), s).await {
                Ok(Some(plain)) => {
                    write_atomically(dest, &plain)?;
                    return Ok(target.name().to_owned());
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("{t}: {e}")),
            }
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

/// `file` from `target`: under the key the job writes now (one request), else
/// under any other extension a copy was written with.
async fn fetch_from(
    archive: &Archive<'_>,
    target: &dyn Target,
    file: &WalFile,
) -> Result<Option<Vec<u8>>, WalError> {
    let key = archive.key(target.name(), file);
    match crate::storage::read_all(target, &key).await {
        Ok(bytes) => {
            let stored = StoredWal {
                file: *file,
                compression: archive.compression,
                encrypted: archive.keys.is_some(),
            };
            return archive
                .read_copy(target, &key, stored, Some(bytes))
                .await
                .map(Some);
        }
        Err(StorageError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    match archive.copies(target, file).await?.into_iter().next() {
        Some((key, stored)) => archive
            .read_copy(target, &key, stored, None)
            .await
            .map(Some),
        None => Ok(None),
    }
}

/// Segment `s` from its `.partial` on `target`, if that is the newest file
/// of its timeline there (no whole segment after it), padded to a segment.
async fn fetch_live_partial(
    archive: &Archive<'_>,
    target: &dyn Target,
    s: wal::SegmentName,
) -> Result<Option<Vec<u8>>, WalError> {
    let prefix = archive.prefix(target.name());
    let newer = target
        .list(&wal::timeline_dir(&prefix, s.timeline))
        .await?
        .iter()
        .filter_map(|o| StoredWal::parse(&prefix, &o.key))
        .any(|w| matches!(w.file, WalFile::Segment(n) if n > s));
    if newer {
        return Ok(None);
    }
    let Some(mut plain) = fetch_from(archive, target, &WalFile::Partial(s)).await? else {
        return Ok(None);
    };
    let size = SegmentHeader::check(&s, &plain, true)?.segment_size as usize;
    plain.resize(size, 0);
    tracing::info!(segment = %s, target_name = target.name(), "served the segment from its .partial (the live end of the archive)");
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
