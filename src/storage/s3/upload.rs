//! One multipart upload: parts sized to fit any backup in S3's 10,000,
//! uploaded a few at a time with retries, completed only when asked, aborted
//! otherwise (also when dropped).

use super::*;

pub(super) struct S3Upload {
    pub(super) target: S3Target,
    pub(super) key: String,
    pub(super) upload_id: Option<String>,
    pub(super) buf: BytesMut,
    pub(super) next_part: i32,
    pub(super) in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    pub(super) done: Vec<CompletedPart>,
    pub(super) total: u64,
}

impl S3Upload {
    fn current_part_size(&self) -> usize {
        part_size(self.target.settings.part_size, self.next_part)
    }

    async fn ensure_started(&mut self) -> Result<String, StorageError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let s = &self.target.settings;
        let (lock_mode, retain_until) = s.lock();
        let out = self
            .target
            .client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.key)
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(retain_until)
            .set_checksum_algorithm(s.checksum())
            .set_server_side_encryption(
                s.server_side_encryption
                    .map(|sse| ServerSideEncryption::from(sse.as_str())),
            )
            .set_storage_class(s.class_for(&self.key))
            .set_tagging(s.tagging_for(&self.key))
            .send()
            .await
            .map_err(|e| self.target.err(&self.key, e))?;
        let id = out.upload_id.ok_or_else(|| StorageError::S3 {
            target: self.target.name.clone(),
            key: self.key.clone(),
            message: "CreateMultipartUpload returned no upload id".into(),
        })?;
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    async fn send_part(&mut self, body: Bytes) -> Result<(), StorageError> {
        let upload_id = self.ensure_started().await?;
        if self.next_part > MAX_PARTS {
            return Err(StorageError::S3 {
                target: self.target.name.clone(),
                key: self.key.clone(),
                message: "more than 10,000 parts; raise part_size".into(),
            });
        }
        while self.in_flight.len() >= self.target.settings.parts_in_flight.max(1) {
            self.join_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let client = self.target.client.clone();
        let bucket = self.target.settings.bucket.clone();
        let key = self.key.clone();
        let name = self.target.name.clone();
        let checksum = self.target.settings.checksum();
        self.in_flight.spawn(async move {
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .set_checksum_algorithm(checksum)
                .body(SdkBody::from(body))
                .send()
                .await
                .map_err(|e| s3_error(&name, &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .set_checksum_crc32(out.checksum_crc32)
                .build())
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), StorageError> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part = joined
                .map_err(|e| StorageError::task_failed(&self.target.name, &self.key, e))??;
            self.done.push(part);
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<PutResult, StorageError> {
        let s = self.target.settings.clone();
        if self.upload_id.is_none() {
            // Small object: one PutObject, nothing to abort on failure.
            let body = self.buf.split().freeze();
            self.target
                .put_object_request(&self.key)
                .body(SdkBody::from(body))
                .send()
                .await
                .map_err(|e| self.target.err(&self.key, e))?;
        } else {
            if !self.buf.is_empty() {
                let last = self.buf.split().freeze();
                self.send_part(last).await?;
            }
            while !self.in_flight.is_empty() {
                self.join_one().await?;
            }
            self.done.sort_by_key(|p| p.part_number);
            let parts = std::mem::take(&mut self.done);
            self.target
                .client
                .complete_multipart_upload()
                .bucket(&s.bucket)
                .key(&self.key)
                .set_upload_id(self.upload_id.clone())
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.target.err(&self.key, e))?;
            // Completed: nothing is left to abort, whatever the checks below find.
            self.upload_id = None;
        }
        self.target.checked(&self.key, self.total).await
    }

    async fn abort_inner(&mut self) -> Result<(), StorageError> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            let s = &self.target.settings;
            // An abort must not hold up a failing run or a shutdown for long.
            let quick = aws_sdk_s3::config::Builder::default().timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .build(),
            );
            self.target
                .client
                .abort_multipart_upload()
                .bucket(&s.bucket)
                .key(&self.key)
                .upload_id(id)
                .customize()
                .config_override(quick)
                .send()
                .await
                .map_err(|e| self.target.err(&self.key, e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn put_part(&mut self, data: Bytes) -> Result<(), StorageError> {
        self.total += data.len() as u64;
        self.buf.extend_from_slice(&data);
        while self.buf.len() >= self.current_part_size() {
            let size = self.current_part_size();
            let part = self.buf.split_to(size).freeze();
            if let Err(e) = self.send_part(part).await {
                let _ = self.abort_inner().await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn complete(mut self: Box<Self>) -> Result<PutResult, StorageError> {
        match self.finish().await {
            Ok(result) => Ok(result),
            Err(e) => {
                if let Err(abort) = self.abort_inner().await {
                    tracing::warn!(error = %abort, "abort after a failed upload also failed");
                }
                if matches!(e, StorageError::SizeMismatch { .. }) {
                    let _ = self.target.delete(&self.key).await;
                }
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), StorageError> {
        self.abort_inner().await
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Dropped mid-upload (a cancelled run): abort in the background if a runtime
        // is still there; start-up cleanup catches anything that escapes.
        if let Some(id) = self.upload_id.take() {
            self.in_flight.abort_all();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let client = self.target.client.clone();
                let bucket = self.target.settings.bucket.clone();
                let key = self.key.clone();
                handle.spawn(async move {
                    let _ = client
                        .abort_multipart_upload()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await;
                });
            }
        }
    }
}
