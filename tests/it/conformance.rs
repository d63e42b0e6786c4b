//! One conformance suite for every target kind: what the runner relies on.

use std::time::Duration;

use bytes::Bytes;
use strata::storage::local::LocalTarget;
use strata::storage::{StorageError, Target, read_all};

use crate::helpers::{Bucket, S3Kind, unique};

const MIB: usize = 1024 * 1024;

fn payload(len: usize) -> Vec<u8> {
    // Not compressible and not repetitive, so misplaced parts would show.
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `real_upload_times`: the server reports when an incomplete upload started (moto
/// answers a fixed date in 2010 for every upload, so age filtering cannot be seen).
/// `conditional_writes`: the server honours `If-None-Match: *` (Garage 2.5
/// ignores it and overwrites).
async fn roundtrip(target: &dyn Target, real_upload_times: bool, conditional_writes: bool) {
    let prefix = unique("conf-");
    // A multipart-sized object written in uneven pieces.
    let data = payload(12 * MIB + 123);
    let key = format!("{prefix}/job/2025/01/01/big.bin");
    let mut upload = target.start_upload(&key).await.unwrap();
    for piece in data.chunks(3 * MIB + 17) {
        upload
            .put_part(Bytes::copy_from_slice(piece))
            .await
            .unwrap();
    }
    assert!(
        matches!(target.head(&key).await, Err(StorageError::NotFound { .. })),
        "an object must not be visible before complete()"
    );
    let put = upload.complete().await.unwrap();
    assert_eq!(put.size, data.len() as u64);
    assert_eq!(read_all(target, &key).await.unwrap(), data);
    assert_eq!(target.head(&key).await.unwrap().size, data.len() as u64);

    // Small objects in one request; empty objects too.
    let small = format!("{prefix}/job/2025/01/01/small.json");
    target
        .put_small(&small, Bytes::from_static(b"{\"a\":1}"))
        .await
        .unwrap();
    assert_eq!(read_all(target, &small).await.unwrap(), b"{\"a\":1}");
    let empty = format!("{prefix}/job/2025/01/02/empty");
    target
        .start_upload(&empty)
        .await
        .unwrap()
        .complete()
        .await
        .unwrap();
    assert_eq!(read_all(target, &empty).await.unwrap(), b"");

    let listed: Vec<String> = target
        .list(&format!("{prefix}/job/"))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, vec![key.clone(), small.clone(), empty.clone()]);
    let before = chrono::Utc::now() - chrono::Duration::minutes(10);
    for o in target.list(&format!("{prefix}/job/")).await.unwrap() {
        assert!(o.modified.is_some_and(|m| m > before), "{o:?}");
    }

    // A new object only where the key is free: what is there stays.
    let once = format!("{prefix}/wal/00000001/000000010000000000000001.zst.enc");
    assert!(
        target
            .put_new(&once, Bytes::from_static(b"first"))
            .await
            .unwrap()
            .is_some()
    );
    let second = target
        .put_new(&once, Bytes::from_static(b"second"))
        .await
        .unwrap();
    if conditional_writes {
        assert!(second.is_none(), "a taken key was written");
        assert_eq!(read_all(target, &once).await.unwrap(), b"first");
    } else {
        // Documented: the listing before the write is the only guard there.
        assert_eq!(read_all(target, &once).await.unwrap(), b"second");
    }
    target.delete(&once).await.unwrap();
    assert_eq!(
        target.cleanup_stale(&prefix, Duration::ZERO).await.unwrap(),
        0,
        "put_new left debris"
    );

    // An aborted upload leaves nothing behind, visible or not.
    let aborted = format!("{prefix}/job/2025/01/03/aborted.bin");
    let mut upload = target.start_upload(&aborted).await.unwrap();
    upload
        .put_part(Bytes::from(payload(6 * MIB)))
        .await
        .unwrap();
    upload.abort().await.unwrap();
    assert!(matches!(
        target.head(&aborted).await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(
        target.cleanup_stale(&prefix, Duration::ZERO).await.unwrap(),
        0,
        "abort left debris"
    );

    // A run killed mid-upload (the upload is never completed nor aborted) leaves
    // debris that start-up cleanup finds, but only once it is old enough.
    let killed = format!("{prefix}/job/2025/01/04/killed.bin");
    let mut upload = target.start_upload(&killed).await.unwrap();
    upload
        .put_part(Bytes::from(payload(6 * MIB)))
        .await
        .unwrap();
    std::mem::forget(upload);
    if real_upload_times {
        assert_eq!(
            target
                .cleanup_stale(&prefix, Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
    }
    assert_eq!(
        target.cleanup_stale(&prefix, Duration::ZERO).await.unwrap(),
        1
    );
    assert_eq!(
        target.cleanup_stale(&prefix, Duration::ZERO).await.unwrap(),
        0
    );

    target.delete(&key).await.unwrap();
    target.delete(&key).await.unwrap(); // deleting twice is fine
    assert!(matches!(
        target.get(&key).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        target.head(&key).await,
        Err(StorageError::NotFound { .. })
    ));
}

#[tokio::test]
async fn local_target_conforms() {
    let dir = tempfile::tempdir().unwrap();
    roundtrip(&LocalTarget::new("local", dir.path()), true, true).await;
}

#[tokio::test]
async fn moto_target_conforms() {
    let bucket = Bucket::create(S3Kind::Moto).await;
    roundtrip(&bucket.target("moto").await, false, true).await;
}

#[tokio::test]
async fn garage_target_conforms() {
    let bucket = Bucket::create(S3Kind::Garage).await;
    roundtrip(&bucket.target("garage").await, true, false).await;
}
