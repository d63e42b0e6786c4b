//! Small objects stored beside a backup (its cluster globals): compressed and
//! encrypted like the backup in one go, and read back with the same checks
//! (size, SHA-256, every chunk authenticated) before anything uses them.

use std::io::Read;
use std::sync::Arc;

use ring::digest::{SHA256, digest};

use super::PipelineError;
use super::encrypt::{Decryptor, Encryptor};
use super::restore_stream::VerifyError;
use crate::domain::Compression;
use crate::keys::Keyring;

/// A sealed small object and what its manifest records.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub bytes: Vec<u8>,
    pub raw_bytes: u64,
    pub sha256: String,
}

/// Compresses (one gzip member or zstd frame) and encrypts `plain`.
///
/// # Errors
/// Compression or encryption failed.
pub fn seal(
    plain: &[u8],
    compression: Compression,
    encryptor: Option<Encryptor>,
) -> Result<Sealed, PipelineError> {
    let mut packed = Vec::with_capacity(plain.len() / 2 + 64);
    compression
        .compress_block(plain, &mut packed)
        .map_err(PipelineError::Compress)?;
    let bytes = match encryptor {
        Some(mut enc) => {
            let mut out = Vec::with_capacity(packed.len() + 256);
            enc.update(&packed, &mut out)?;
            enc.finish(&mut out)?;
            out
        }
        None => packed,
    };
    Ok(Sealed {
        sha256: hex::encode(digest(&SHA256, &bytes)),
        raw_bytes: plain.len() as u64,
        bytes,
    })
}

/// Checks and opens a sealed object read back from storage.
///
/// # Errors
/// Size, hash or authentication fail, or it does not decompress to `raw_bytes`.
pub fn open(
    stored: &[u8],
    stored_bytes: u64,
    sha256: &str,
    raw_bytes: u64,
    compression: Compression,
    keys: Option<&Arc<Keyring>>,
) -> Result<Vec<u8>, VerifyError> {
    if stored.len() as u64 != stored_bytes {
        return Err(VerifyError::Size {
            expected: stored_bytes,
            actual: stored.len() as u64,
        });
    }
    let actual = hex::encode(digest(&SHA256, stored));
    if actual != sha256 {
        return Err(VerifyError::Hash {
            expected: sha256.to_owned(),
            actual,
        });
    }
    let read = unseal(stored, compression, keys, raw_bytes)?;
    if read.len() as u64 != raw_bytes {
        return Err(VerifyError::Decompress(format!(
            "{} bytes after decompression, the manifest says {raw_bytes}",
            read.len()
        )));
    }
    Ok(read)
}

/// Decrypts (with `keys`) and decompresses a sealed object, reading at most
/// `limit` + 1 bytes of output so a hostile object cannot inflate without
/// bound; the caller compares the length it got with the one it expects.
///
/// # Errors
/// Authentication or decompression failed.
pub fn unseal(
    stored: &[u8],
    compression: Compression,
    keys: Option<&Arc<Keyring>>,
    limit: u64,
) -> Result<Vec<u8>, VerifyError> {
    let packed = match keys {
        Some(keys) => {
            let mut dec = Decryptor::new(keys.clone());
            let mut out = Vec::new();
            dec.update(stored, &mut out)?;
            dec.finish(&mut out)?;
            out
        }
        None => stored.to_vec(),
    };
    let limit = limit.saturating_add(1);
    let mut plain = Vec::new();
    match compression {
        Compression::None => Ok(packed),
        Compression::Gzip(_) => flate2::read::MultiGzDecoder::new(&packed[..])
            .take(limit)
            .read_to_end(&mut plain)
            .map(|_| plain),
        Compression::Zstd(_) => zstd::Decoder::new(&packed[..])
            .and_then(|d| d.take(limit).read_to_end(&mut plain).map(|_| plain)),
    }
    .map_err(|e| VerifyError::Decompress(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn ring() -> Arc<Keyring> {
        Arc::new(
            Keyring::new(
                "k1",
                vec![MasterKey::from_bytes(
                    "k1",
                    core::array::from_fn(|i| i as u8),
                )],
            )
            .unwrap(),
        )
    }

    #[test]
    fn sealed_objects_open_only_when_every_check_passes() {
        let keys = ring();
        for compression in [
            Compression::None,
            Compression::Gzip(6),
            Compression::Zstd(3),
        ] {
            let enc = Encryptor::new(keys.active(), 1024).unwrap();
            let s = seal(b"CREATE ROLE app;", compression, Some(enc)).unwrap();
            let open_ = |bytes: &[u8]| {
                open(
                    bytes,
                    s.bytes.len() as u64,
                    &s.sha256,
                    s.raw_bytes,
                    compression,
                    Some(&keys),
                )
            };
            assert_eq!(open_(&s.bytes).unwrap(), b"CREATE ROLE app;");
            let mut flipped = s.bytes.clone();
            *flipped.last_mut().unwrap() ^= 1;
            assert!(matches!(open_(&flipped), Err(VerifyError::Hash { .. })));
            assert!(matches!(
                open_(&s.bytes[1..]),
                Err(VerifyError::Size { .. })
            ));
        }
    }
}
