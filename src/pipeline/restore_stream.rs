//! Reading a stored backup back: SHA-256 and size checked and every chunk
//! authenticated while streaming, then decompressed (all gzip members / zstd frames).
//!
//! The end of the plaintext stream is only delivered after the whole object has been
//! verified; any failure is delivered as an I/O error instead, so a consumer such as
//! `psql --single-transaction` never reaches its COMMIT on bad data.

use std::sync::Arc;

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use bytes::Bytes;
use futures::StreamExt;
use ring::digest::{Context as Sha, SHA256};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::io::StreamReader;

use super::encrypt::{CryptoError, Decryptor};
use crate::domain::Compression;
use crate::keys::Keyring;
use crate::pipeline::progress::Progress;
use crate::storage::{ByteStream, StorageError};

/// Plaintext handed on per message.
const BATCH: usize = 1 << 20;

/// Why a stored object failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("decryption failed: {0}")]
    Crypto(#[from] CryptoError),
    #[error("stored object has {actual} bytes, the manifest says {expected}")]
    Size { expected: u64, actual: u64 },
    #[error("SHA-256 mismatch: stored object hashes to {actual}, the manifest says {expected}")]
    Hash { expected: String, actual: String },
    #[error("the backup is encrypted but no encryption keys are configured")]
    NoKeys,
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("{0}")]
    Internal(String),
}

/// What the stored object is expected to be.
#[derive(Debug, Clone)]
pub struct Expected {
    pub stored_bytes: u64,
    pub sha256: String,
    pub encrypted: bool,
    pub compression: Compression,
}

/// A verified, decrypted, decompressed reader plus the task whose result says
/// whether the stored bytes were good.
pub struct Opened {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    pub check: JoinHandle<Result<(), VerifyError>>,
}

/// Starts reading `stream` as described by `expected`; stored bytes read are
/// added to `progress`.
///
/// # Errors
/// The backup is encrypted and no keys are configured.
pub fn open(
    stream: ByteStream,
    expected: Expected,
    keys: Option<Arc<Keyring>>,
    progress: Option<Arc<Progress>>,
) -> Result<Opened, VerifyError> {
    let decryptor = match (expected.encrypted, keys) {
        (true, Some(keys)) => Some(Decryptor::new(keys)),
        (true, None) => return Err(VerifyError::NoKeys),
        (false, _) => None,
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let check = tokio::spawn(pump(stream, decryptor, expected.clone(), tx, progress));
    let plain = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let reader = StreamReader::new(Box::pin(plain));
    let reader: Box<dyn AsyncRead + Send + Unpin> = match expected.compression {
        Compression::None => Box::new(reader),
        Compression::Gzip(_) => {
            let mut d = GzipDecoder::new(reader);
            d.multiple_members(true);
            Box::new(d)
        }
        Compression::Zstd(_) => {
            let mut d = ZstdDecoder::new(reader);
            d.multiple_members(true);
            Box::new(d)
        }
    };
    Ok(Opened { reader, check })
}

/// Reads the stored object (async: network and disk) and hands its chunks to
/// the checking thread; the two results make the verdict.
async fn pump(
    mut stream: ByteStream,
    decryptor: Option<Decryptor>,
    expected: Expected,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    progress: Option<Arc<Progress>>,
) -> Result<(), VerifyError> {
    let (raw_tx, raw_rx) = mpsc::channel::<Bytes>(8);
    let out = tx.clone();
    let checker = super::cpu::thread("verify", move || {
        check_chunks(raw_rx, decryptor, &expected, &out)
    });
    let mut read = Ok(());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if let Some(p) = &progress {
                    p.add(chunk.len() as u64);
                }
                if raw_tx.send(chunk).await.is_err() {
                    // The checker stopped: its own result says why.
                    break;
                }
            }
            Err(e) => {
                read = Err(VerifyError::from(e));
                break;
            }
        }
    }
    // End of input for the checker: a stream cut short fails its size, hash
    // or final-chunk check there, so its end is never released.
    drop(raw_tx);
    let checked = checker
        .await
        .map_err(|e| VerifyError::Internal(e.to_string()))
        .and_then(|r| r);
    let result = read.and(checked);
    if let Err(e) = &result {
        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
    }
    result
}

/// Hashes and decrypts chunk by chunk on its own thread; the end of the
/// plaintext is released only after every check passed.
fn check_chunks(
    mut rx: mpsc::Receiver<Bytes>,
    mut decryptor: Option<Decryptor>,
    expected: &Expected,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), VerifyError> {
    let mut sha = Sha::new(&SHA256);
    let mut size = 0u64;
    // Network frames are small; hand the decompressor ~1 MiB at a time.
    let mut plain = Vec::with_capacity(BATCH + 65_536);
    while let Some(chunk) = rx.blocking_recv() {
        sha.update(&chunk);
        size += chunk.len() as u64;
        match &mut decryptor {
            Some(dec) => dec.update(&chunk, &mut plain)?,
            None => plain.extend_from_slice(&chunk),
        }
        if plain.len() >= BATCH {
            let batch = std::mem::replace(&mut plain, Vec::with_capacity(BATCH + 65_536));
            if tx.blocking_send(Ok(Bytes::from(batch))).is_err() {
                // The consumer stopped reading; its own error explains why.
                return Ok(());
            }
        }
    }
    if let Some(dec) = &mut decryptor {
        dec.finish(&mut plain)?;
    }
    if size != expected.stored_bytes {
        return Err(VerifyError::Size {
            expected: expected.stored_bytes,
            actual: size,
        });
    }
    let actual = hex::encode(sha.finish());
    if actual != expected.sha256 {
        return Err(VerifyError::Hash {
            expected: expected.sha256.clone(),
            actual,
        });
    }
    // Only now, with everything verified, may the consumer see the end.
    if !plain.is_empty() {
        let _ = tx.blocking_send(Ok(Bytes::from(plain)));
    }
    Ok(())
}
