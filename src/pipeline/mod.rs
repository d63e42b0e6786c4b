//! The streaming path between `pg_dump` and the targets, and back for restores.
//!
//! Backup: the async reader takes 1 MiB blocks from pg_dump's stdout; blocks are
//! compressed on the pipeline's rayon pool several at a time and come back in order; one
//! dedicated thread encrypts and hashes the stored bytes; a tee hands every stored
//! block to each target's upload task. Channels between stages are bounded, so
//! memory stays flat whatever the database size, and a slow target slows the dump
//! instead of buffering it. The pipeline only streams and reports: the runner
//! decides whether uploads are completed or aborted.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use ring::digest::{Context as Sha, SHA256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pg::copy_counter::RowCounter;
use crate::pg::{PgDump, SourceError};
use crate::pipeline::progress::Progress;
use crate::storage::{StorageError, Upload};

pub mod compress;
pub mod cpu;
pub mod encrypt;
pub mod frames;
pub mod progress;
pub mod restore_stream;
pub mod small;
pub mod tar_tap;

pub use tar_tap::BaseFiles;

use crate::domain::Compression;
use encrypt::{CryptoError, Encryptor};

/// Bytes read from pg_dump per block (and compressed as one gzip member / zstd frame).
pub const BLOCK: usize = 1 << 20;
/// Blocks buffered between stages.
const CHANNEL_DEPTH: usize = 4;

/// Why the stream did not produce a complete backup.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("encryption failed: {0}")]
    Crypto(#[from] CryptoError),
    #[error("compression failed: {0}")]
    Compress(std::io::Error),
    #[error("every target failed: {}", .0.join("; "))]
    AllTargetsFailed(Vec<String>),
    #[error("cancelled (the daemon is stopping)")]
    Cancelled,
    #[error(transparent)]
    Stopped(#[from] cpu::Stopped),
}

/// What went into the targets.
#[derive(Debug, Clone)]
pub struct StreamStats {
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    /// Row counts parsed from a plain dump; `None` for custom dumps.
    pub tables: Option<BTreeMap<String, u64>>,
    /// What a base backup's tar said of itself.
    pub base_files: Option<BaseFiles>,
}

/// What the raw stream is read for besides being stored, on a thread of its
/// own from cheap clones of the same blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tap {
    Nothing,
    /// Row counts of a plain dump's COPY blocks.
    Rows,
    /// The `backup_label` and `backup_manifest` inside a base backup's tar.
    BaseFiles,
}

/// What a tap found.
enum Tapped {
    Rows(BTreeMap<String, u64>),
    Base(BaseFiles),
}

/// One target's upload after streaming: still open (to be completed or aborted by
/// the caller), or failed and already aborted.
pub type TargetUpload = (String, Result<Box<dyn Upload>, StorageError>);

/// Streams pg_dump's output into every upload. Always hands the uploads back, so
/// the caller can complete or abort each; it does not wait for pg_dump's exit.
/// Cancelling `cancel` stops the stream (the result is then an error).
pub async fn backup_stream(
    dump: &mut PgDump,
    compression: Compression,
    encryptor: Option<Encryptor>,
    tap: Tap,
    uploads: Vec<(String, Box<dyn Upload>)>,
    cancel: &CancellationToken,
    progress: Option<&Progress>,
) -> (Result<StreamStats, PipelineError>, Vec<TargetUpload>) {
    let (tee_tx, tee_rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let tee = tokio::spawn(tee(tee_rx, uploads, cancel.clone()));
    let (seal_tx, seal_rx) = mpsc::channel::<Option<Bytes>>(CHANNEL_DEPTH);
    let sealer = cpu::thread("seal", move || seal(seal_rx, encryptor, &tee_tx));
    let (count_tx, counter) = spawn_tap(tap);
    let read = read_and_compress(dump, compression, &seal_tx, count_tx, cancel, progress).await;
    let ended = read.is_ok() && seal_tx.send(None).await.is_ok();
    drop(seal_tx);
    let sealed = sealer.await;
    let uploads = match tee.await {
        Ok(uploads) => uploads,
        Err(e) => {
            // The uploads are lost with the task; start-up clean-up removes them.
            tracing::error!(error = %e, "the upload task stopped unexpectedly");
            return (
                Err(PipelineError::Stopped(cpu::Stopped("upload"))),
                Vec::new(),
            );
        }
    };
    let (tables, base_files) = match counter {
        Some(h) => match h.await {
            Ok(Tapped::Rows(t)) => (Some(t), None),
            Ok(Tapped::Base(m)) => (None, Some(m)),
            Err(e) => return (Err(e.into()), uploads),
        },
        None => (None, None),
    };
    let failures = || {
        uploads
            .iter()
            .filter_map(|(_, u)| u.as_ref().err().map(ToString::to_string))
            .collect::<Vec<_>>()
    };
    let result = (|| {
        if cancel.is_cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let raw_bytes = match read {
            Ok(n) => n,
            Err(Downstream::Closed) => return Err(PipelineError::AllTargetsFailed(failures())),
            Err(Downstream::Failed(e)) => return Err(e),
        };
        let (stored_bytes, sha256) = match sealed?? {
            Some(done) if ended => done,
            _ => return Err(PipelineError::AllTargetsFailed(failures())),
        };
        if uploads.iter().all(|(_, u)| u.is_err()) {
            return Err(PipelineError::AllTargetsFailed(failures()));
        }
        Ok(StreamStats {
            raw_bytes,
            stored_bytes,
            sha256,
            tables,
            base_files,
        })
    })();
    (result, uploads)
}

/// Starts the thread that reads the raw stream for `tap` (none for
/// [`Tap::Nothing`]), fed cheap clones of the blocks through the sender.
#[allow(clippy::type_complexity)]
fn spawn_tap(
    tap: Tap,
) -> (
    Option<mpsc::Sender<Bytes>>,
    Option<impl std::future::Future<Output = Result<Tapped, cpu::Stopped>>>,
) {
    if tap == Tap::Nothing {
        (None, None)
    } else {
        let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH * 2);
        let handle = cpu::thread("tap", move || {
            if tap == Tap::Rows {
                let mut counter = RowCounter::default();
                while let Some(block) = rx.blocking_recv() {
                    counter.feed(&block);
                }
                Tapped::Rows(counter.finish())
            } else {
                let mut tap = tar_tap::TarTap::default();
                while let Some(block) = rx.blocking_recv() {
                    tap.feed(&block);
                }
                Tapped::Base(tap.finish())
            }
        });
        (Some(tx), Some(handle))
    }
}

enum Downstream {
    /// The later stages stopped (every target failed).
    Closed,
    Failed(PipelineError),
}

/// A block being compressed on the CPU pool.
type Compressing = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<std::io::Result<Vec<u8>>, cpu::Stopped>> + Send>,
>;

/// Reads pg_dump, feeds the row counter, compresses blocks in parallel and sends
/// them on in order. Returns the raw byte count.
async fn read_and_compress(
    dump: &mut PgDump,
    compression: Compression,
    out: &mpsc::Sender<Option<Bytes>>,
    counter: Option<mpsc::Sender<Bytes>>,
    cancel: &CancellationToken,
    progress: Option<&Progress>,
) -> Result<u64, Downstream> {
    let parallel = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) + 1;
    let mut queue: VecDeque<Compressing> = VecDeque::new();
    let mut raw = 0u64;
    async fn forward(
        queue: &mut VecDeque<Compressing>,
        out: &mpsc::Sender<Option<Bytes>>,
    ) -> Result<(), Downstream> {
        let Some(job) = queue.pop_front() else {
            return Ok(());
        };
        let block = job
            .await
            .map_err(|e| Downstream::Failed(e.into()))?
            .map_err(|e| Downstream::Failed(PipelineError::Compress(e)))?;
        out.send(Some(block.into()))
            .await
            .map_err(|_| Downstream::Closed)
    }
    loop {
        let mut buf = BytesMut::with_capacity(BLOCK);
        let n = tokio::select! {
            read = dump.read(&mut buf) => read.map_err(|e| Downstream::Failed(e.into()))?,
            () = cancel.cancelled() => return Err(Downstream::Closed),
        };
        if n == 0 {
            break;
        }
        raw += n as u64;
        if let Some(p) = progress {
            p.add(n as u64);
        }
        let block = buf.freeze();
        if let Some(tx) = &counter {
            // The counter only reads; a cheap clone of the same bytes.
            let _ = tx.send(block.clone()).await;
        }
        if compression == Compression::None {
            out.send(Some(block))
                .await
                .map_err(|_| Downstream::Closed)?;
            continue;
        }
        if queue.len() >= parallel {
            forward(&mut queue, out).await?;
        }
        queue.push_back(Box::pin(cpu::spawn("compression", move || {
            let mut packed = Vec::with_capacity(block.len() / 2);
            compression
                .compress_block(&block, &mut packed)
                .map(|()| packed)
        })));
    }
    while !queue.is_empty() {
        forward(&mut queue, out).await?;
    }
    Ok(raw)
}

/// Encrypts (when configured) and hashes the stored stream on its own thread.
/// Returns `None` when the stream was cut short or the tee went away.
fn seal(
    mut rx: mpsc::Receiver<Option<Bytes>>,
    mut encryptor: Option<Encryptor>,
    tee: &mpsc::Sender<Bytes>,
) -> Result<Option<(u64, String)>, CryptoError> {
    let mut sha = Sha::new(&SHA256);
    let mut stored = 0u64;
    let mut emit = |buf: Vec<u8>| -> bool {
        if buf.is_empty() {
            return true;
        }
        sha.update(&buf);
        stored += buf.len() as u64;
        tee.blocking_send(Bytes::from(buf)).is_ok()
    };
    loop {
        match rx.blocking_recv() {
            Some(Some(block)) => {
                let sealed = match &mut encryptor {
                    Some(enc) => {
                        let mut out = Vec::with_capacity(block.len() + block.len() / 1024 + 128);
                        enc.update(&block, &mut out)?;
                        out
                    }
                    None => block.to_vec(),
                };
                if !emit(sealed) {
                    return Ok(None);
                }
            }
            Some(None) => {
                if let Some(enc) = encryptor.take() {
                    let mut out = Vec::new();
                    enc.finish(&mut out)?;
                    if !emit(out) {
                        return Ok(None);
                    }
                }
                return Ok(Some((stored, hex::encode(sha.finish()))));
            }
            None => return Ok(None),
        }
    }
}

/// Hands every stored block to each upload's task; a failing target drops out
/// (its upload aborted) while the others go on.
async fn tee(
    mut rx: mpsc::Receiver<Bytes>,
    uploads: Vec<(String, Box<dyn Upload>)>,
    cancel: CancellationToken,
) -> Vec<TargetUpload> {
    let mut workers = Vec::new();
    for (name, mut upload) in uploads {
        let (tx, mut wrx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let cancel = cancel.clone();
        let handle = tokio::spawn(async move {
            while let Some(block) = wrx.recv().await {
                // On cancel the upload is handed back unfinished; the caller aborts it.
                let written = tokio::select! {
                    biased;
                    () = cancel.cancelled() => None,
                    r = upload.put_part(block) => Some(r),
                };
                match written {
                    None => break,
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        if let Err(abort) = upload.abort().await {
                            tracing::warn!(error = %abort, "abort after a failed write also failed");
                        }
                        return Err(e);
                    }
                }
            }
            Ok(upload)
        });
        workers.push((name, Some(tx), handle));
    }
    'stream: loop {
        let block = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            block = rx.recv() => match block {
                Some(b) => b,
                None => break,
            },
        };
        let mut live = 0;
        for (_, tx, _) in &mut workers {
            if let Some(sender) = tx {
                let sent = tokio::select! {
                    biased;
                    () = cancel.cancelled() => break 'stream,
                    sent = sender.send(block.clone()) => sent,
                };
                if sent.is_ok() {
                    live += 1;
                } else {
                    *tx = None;
                }
            }
        }
        if live == 0 {
            break;
        }
    }
    let mut out = Vec::with_capacity(workers.len());
    for (name, tx, handle) in workers {
        drop(tx);
        let result = handle
            .await
            .unwrap_or_else(|e| Err(StorageError::task_failed(&name, "", e)));
        out.push((name, result));
    }
    out
}
