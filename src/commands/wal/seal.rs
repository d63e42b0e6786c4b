//! Sealing a WAL file for the archive: read block by block, checked against
//! its name, compressed on every core and encrypted, with only a few blocks in
//! memory (PostgreSQL waits for each `archive_command`).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ring::digest::SHA256;

use super::{Identity, MAX_FILE, WalError};
use crate::domain::Compression;
use crate::domain::wal::{SegmentHeader, WalFile};
use crate::keys::Keyring;
use crate::pipeline::PipelineError;
use crate::pipeline::encrypt::Encryptor;

/// Bytes of a WAL file compressed as one frame (the pipeline's block).
const BLOCK: usize = crate::pipeline::BLOCK;

/// The job's compression and keys, to seal a file on a blocking thread.
pub(super) struct Sealer {
    pub(super) compression: Compression,
    pub(super) keys: Option<Arc<Keyring>>,
    pub(super) chunk_size: u32,
}

impl Sealer {
    /// Reads the WAL file `file` at `path` block by block: hashes it, checks
    /// that it is what its name says, compresses its blocks side by side on
    /// every core (one zstd frame or gzip member each) and encrypts them. Only
    /// a few blocks of the file are in memory at once.
    pub(super) fn seal_file(&self, path: &Path, file: &WalFile) -> Result<SealedFile, WalError> {
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
pub(super) struct SealedFile {
    pub(super) bytes: Bytes,
    /// SHA-256 of the plain content.
    pub(super) sha: [u8; 32],
    /// Whose cluster a segment belongs to (none for other files).
    pub(super) identity: Option<Identity>,
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
