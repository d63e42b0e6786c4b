//! `wal-fetch`: a WAL file from the archive into the place recovery asks for,
//! checked before it is written, and "not there" told apart from "cannot read".

use std::path::Path;

use super::{Archive, WalError};
use crate::app::Strata;
use crate::domain::wal::{self, SegmentHeader, StoredWal, WalFile};
use crate::storage::{StorageError, Target};

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
pub(crate) async fn fetch_from(
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
