//! From a verified backup stream to the loader: a plain script parsed on a
//! thread of its own, a custom archive turned into that script by
//! `pg_restore -f -` first.

use super::*;

/// Reads a script on a thread of its own (decompression happens there too,
/// inside the reader) and hands parsed events to the loader. Returns the
/// script's size in bytes.
pub(super) fn parse_script(
    mut input: impl Read,
    tx: &mpsc::Sender<load::Input>,
) -> Result<u64, String> {
    let mut parser = script::ScriptParser::default();
    loop {
        let mut buf = vec![0u8; COPY_BUF];
        let mut filled = 0;
        while filled < COPY_BUF / 2 {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut events = Vec::new();
        if filled == 0 {
            parser.finish(&mut events).map_err(|e| e.to_string())?;
            if !events.is_empty() && tx.blocking_send(Ok(events)).is_err() {
                return Err("the loader stopped".into());
            }
            return Ok(parser.bytes);
        }
        buf.truncate(filled);
        parser
            .feed(Bytes::from(buf), &mut events)
            .map_err(|e| e.to_string())?;
        if !events.is_empty() && tx.blocking_send(Ok(events)).is_err() {
            return Err("the loader stopped".into());
        }
    }
}

/// Starts the script reader on its own thread; its result arrives on the
/// returned channel (an error is also sent to the loader, which stops).
pub(super) fn spawn_parser(
    input: impl Read + Send + 'static,
    tx: mpsc::Sender<load::Input>,
) -> tokio::sync::oneshot::Receiver<Result<u64, String>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("strata-restore-read".into())
        .spawn(move || {
            let result = parse_script(input, &tx);
            if let Err(e) = &result {
                let _ = tx.blocking_send(Err(e.clone()));
            }
            let _ = done_tx.send(result);
        })
        .expect("spawn the restore reader thread");
    done_rx
}

/// `pg_restore` able to read the archive and write SQL for the destination.
pub(super) async fn pg_restore_tool(
    entry: &Entry,
    dest: &DatabaseInfo,
) -> Result<pg::Tool, RestoreError> {
    let dump_major = entry
        .manifest
        .pg_dump_version
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    let need = DatabaseInfo {
        name: dest.name.clone(),
        server_version: entry.manifest.pg_dump_version.clone(),
        server_version_num: dest.server_version_num.max(dump_major * 10_000),
    };
    Ok(pg::find_tool("pg_restore", &need).await?)
}

/// Streams the verified dump into `dest` and returns what was loaded.
// Long on purpose: both dump formats share the verified stream and the loader; the branches differ only in how the stream is parsed.
pub(super) async fn restore_into(
    strata: &Strata,
    target: &dyn Target,
    entry: &Entry,
    dest: &DbUrl,
    rewrite: &rewrite::Rewrite,
    jobs: usize,
    progress: &Arc<Progress>,
) -> Result<load::Loaded, RestoreError> {
    let manifest = &entry.manifest;
    let (reader, check) = open_verified(
        strata,
        target,
        entry,
        &entry.object_key(),
        Some(progress.clone()),
    )
    .await?;
    let (tx, rx) = mpsc::channel::<load::Input>(4);
    let mut child = None;
    let (parsed, fed) = match manifest.format {
        DumpFormat::Base => return Err(RestoreError::BaseBackup(manifest.backup_id.clone())),
        DumpFormat::Plain => (
            spawn_parser(tokio_util::io::SyncIoBridge::new(reader), tx),
            None,
        ),
        DumpFormat::Custom => {
            let client = dest.connect().await?;
            let info = pg::database_info(dest, &client).await?;
            drop(client);
            let tool = pg_restore_tool(entry, &info).await?;
            // pg_restore only turns the archive into SQL; it connects nowhere.
            let mut cmd = Command::new(&tool.path);
            cmd.args(["--file=-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut c = cmd.spawn().map_err(|source| SourceError::Spawn {
                tool: "pg_restore".into(),
                source,
            })?;
            let stdin = c.stdin.take().expect("piped stdin");
            let stdout = c.stdout.take().expect("piped stdout");
            let stderr = pg::capture_stderr(c.stderr.take().expect("piped stderr"));
            // Decompression happens inside the reader: on a thread of its own.
            let mut from = tokio_util::io::SyncIoBridge::new(reader);
            let mut to = tokio_util::io::SyncIoBridge::new(stdin);
            let feeder = crate::pipeline::cpu::thread("restore-feed", move || {
                let n = std::io::copy(&mut from, &mut to);
                use std::io::Write;
                n.and_then(|n| to.flush().map(|()| n))
            });
            child = Some((c, stderr));
            (
                spawn_parser(tokio_util::io::SyncIoBridge::new(stdout), tx),
                Some(feeder),
            )
        }
    };
    let loaded = load::load(dest, rx, jobs, rewrite, progress).await;
    if loaded.is_err() {
        if let Some((c, _)) = &mut child {
            let _ = c.kill().await;
        }
    }
    let parsed = parsed
        .await
        .unwrap_or_else(|_| Err("the restore reader stopped".into()));
    let verified = check
        .await
        .map_err(|e| RestoreError::Internal(format!("the verification task failed: {e}")))?;
    // A bad backup explains everything after it: report it first.
    verified?;
    let raw = match fed {
        Some(feeder) => {
            let fed = feeder
                .await
                .map_err(|e| RestoreError::Internal(e.to_string()))?;
            let (mut c, stderr) = child.expect("pg_restore child");
            let status = c.wait().await.map_err(|source| SourceError::Spawn {
                tool: "pg_restore".into(),
                source,
            })?;
            let stderr = stderr.await.unwrap_or_default();
            if !status.success() {
                return Err(RestoreError::Tool {
                    tool: "pg_restore".into(),
                    message: format!("{status}: {}", pg::one_line(&stderr)),
                });
            }
            fed.map_err(|e| RestoreError::Tool {
                tool: "pg_restore".into(),
                message: format!("writing to pg_restore failed: {e}"),
            })?
        }
        None => parsed
            .clone()
            .map_err(|e| RestoreError::Load(load::LoadError::Input(e)))?,
    };
    let loaded = loaded?;
    parsed.map_err(|e| RestoreError::Load(load::LoadError::Input(e)))?;
    if raw != manifest.raw_bytes {
        return Err(RestoreError::RawSize {
            expected: manifest.raw_bytes,
            actual: raw,
        });
    }
    Ok(loaded)
}
