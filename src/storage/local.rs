//! Local-disk target: staging file in the destination directory, fsync, rename, fsync
//! of the directory. A final name only ever holds a whole object.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{ByteStream, Medium, ObjectMeta, PutResult, StorageError, Target, Upload};

/// Staging files are named `.{final name}.strata-partial-{uuid}`.
const STAGING_MARK: &str = ".strata-partial-";
const READ_BUF: usize = 1 << 20;

/// A directory on a local (or mounted) filesystem.
#[derive(Debug)]
pub struct LocalTarget {
    name: String,
    root: PathBuf,
}

impl LocalTarget {
    /// A target rooted at `root` (created on first write).
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            root: root.into(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn io(&self, key: &str) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
        let key = key.to_owned();
        move |source| StorageError::Io {
            target: self.name.clone(),
            key,
            source,
        }
    }

    fn staging_path(path: &Path) -> PathBuf {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        path.with_file_name(format!(
            ".{}{STAGING_MARK}{}",
            name.unwrap_or_default(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    async fn create_staging(
        &self,
        key: &str,
    ) -> Result<(PathBuf, PathBuf, tokio::fs::File), StorageError> {
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(self.io(key))?;
        }
        let staging = Self::staging_path(&path);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
            .await
            .map_err(self.io(key))?;
        Ok((path, staging, file))
    }
}

/// Renames `staging` to `path` after flushing both file and directory to disk.
async fn commit(file: tokio::fs::File, staging: &Path, path: &Path) -> std::io::Result<u64> {
    file.sync_all().await?;
    let size = file.metadata().await?.len();
    drop(file);
    tokio::fs::rename(staging, path).await?;
    if let Some(dir) = path.parent() {
        tokio::fs::File::open(dir).await?.sync_all().await?;
    }
    Ok(size)
}

struct LocalUpload {
    target: String,
    key: String,
    path: PathBuf,
    staging: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
}

impl LocalUpload {
    fn io(&self, source: std::io::Error) -> StorageError {
        StorageError::Io {
            target: self.target.clone(),
            key: self.key.clone(),
            source,
        }
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn put_part(&mut self, data: Bytes) -> Result<(), StorageError> {
        let file = self.file.as_mut().expect("upload not finished");
        match file.write_all(&data).await {
            Ok(()) => {
                self.written += data.len() as u64;
                Ok(())
            }
            Err(e) => Err(self.io(e)),
        }
    }

    async fn complete(mut self: Box<Self>) -> Result<PutResult, StorageError> {
        let mut file = self.file.take().expect("upload not finished");
        let result = async {
            file.flush().await?;
            commit(file, &self.staging, &self.path).await
        }
        .await;
        match result {
            Ok(size) if size == self.written => Ok(PutResult {
                size,
                version_id: None,
                storage_class: None,
            }),
            Ok(size) => {
                let _ = tokio::fs::remove_file(&self.path).await;
                Err(StorageError::SizeMismatch {
                    target: self.target.clone(),
                    key: self.key.clone(),
                    expected: self.written,
                    actual: size,
                })
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&self.staging).await;
                Err(self.io(e))
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        drop(self.file.take());
        match tokio::fs::remove_file(&self.staging).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        // Dropped without complete/abort (a cancelled run): never leave staging files.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}

#[async_trait]
impl Target for LocalTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn medium(&self) -> Medium {
        Medium::Local
    }

    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>, StorageError> {
        let (path, staging, file) = self.create_staging(key).await?;
        Ok(Box::new(LocalUpload {
            target: self.name.clone(),
            key: key.to_owned(),
            path,
            staging,
            file: Some(file),
            written: 0,
        }))
    }

    async fn put_small(&self, key: &str, data: Bytes) -> Result<PutResult, StorageError> {
        let mut upload = self.start_upload(key).await?;
        let written = upload.put_part(data).await;
        match written {
            Ok(()) => upload.complete().await,
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<Option<PutResult>, StorageError> {
        let (path, staging, mut file) = self.create_staging(key).await?;
        let written = async {
            file.write_all(&data).await?;
            file.sync_all().await?;
            drop(file);
            // A hard link fails on a taken name, where a rename would replace it.
            let linked = match tokio::fs::hard_link(&staging, &path).await {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            };
            tokio::fs::remove_file(&staging).await?;
            if linked {
                if let Some(dir) = path.parent() {
                    tokio::fs::File::open(dir).await?.sync_all().await?;
                }
            }
            Ok(linked)
        }
        .await;
        match written {
            Ok(true) => Ok(Some(PutResult {
                size: data.len() as u64,
                version_id: None,
                storage_class: None,
            })),
            Ok(false) => Ok(None),
            Err(e) => {
                let _ = tokio::fs::remove_file(&staging).await;
                Err(self.io(key)(e))
            }
        }
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        let file = tokio::fs::File::open(self.path(key)).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StorageError::NotFound {
                    target: self.name.clone(),
                    key: key.to_owned(),
                }
            } else {
                self.io(key)(e)
            }
        })?;
        let target = self.name.clone();
        let key = key.to_owned();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_BUF);
        Ok(Box::pin(futures::StreamExt::map(stream, move |r| {
            r.map_err(|source| StorageError::Io {
                target: target.clone(),
                key: key.clone(),
                source,
            })
        })))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        match tokio::fs::metadata(self.path(key)).await {
            Ok(m) => Ok(ObjectMeta {
                key: key.to_owned(),
                size: m.len(),
                ..ObjectMeta::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::NotFound {
                target: self.name.clone(),
                key: key.to_owned(),
            }),
            Err(e) => Err(self.io(key)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || walk(&root, &prefix, false))
            .await
            .map_err(|e| StorageError::task_failed(&self.name, "", e))?
            .map_err(|source| StorageError::Io {
                target: name,
                key: String::new(),
                source,
            })
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|(meta, modified)| ObjectMeta {
                        modified: Some(modified.into()),
                        ..meta
                    })
                    .collect()
            })
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(key)(e)),
        }
    }

    async fn cleanup_stale(&self, prefix: &str, age: Duration) -> Result<usize, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
            let cutoff = SystemTime::now() - age;
            let mut removed = 0;
            for (meta, modified) in walk(&root, &prefix, true)? {
                let is_staging = meta
                    .key
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with('.') && n.contains(STAGING_MARK));
                if is_staging && modified <= cutoff {
                    std::fs::remove_file(root.join(&meta.key))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| StorageError::task_failed(&self.name, "", e))?
        .map_err(|source| StorageError::Io {
            target: name,
            key: String::new(),
            source,
        })
    }
}

/// Lists files under `root/prefix` as keys relative to `root`; staging files only
/// when `staging` is set.
fn walk(
    root: &Path,
    prefix: &str,
    staging: bool,
) -> std::io::Result<Vec<(ObjectMeta, SystemTime)>> {
    // A prefix is a string prefix of the key, as on S3: walk the directory it
    // names (up to its last `/`) and keep the keys that start with it.
    let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let is_staging = entry.file_name().to_string_lossy().contains(STAGING_MARK);
            if is_staging != staging {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            if !rel.starts_with(prefix) {
                continue;
            }
            out.push((
                ObjectMeta {
                    key: rel,
                    size: meta.len(),
                    ..ObjectMeta::default()
                },
                meta.modified()?,
            ));
        }
    }
    out.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    Ok(out)
}
