//! Unpacking a base backup's tar into a data directory, checked against the
//! server's own `backup_manifest` on the way: every file's size and CRC-32C
//! is computed as it is written (the check `pg_verifybackup` makes, without
//! reading 1.25 GB a second time), and files are flushed to disk by two
//! helper threads while the next ones are written, so the server's start-up
//! (which syncs the whole directory after a restore) finds nothing left to
//! write.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use serde::Deserialize;

/// Bytes read from the tar per write.
const CHUNK: usize = 1 << 20;
/// Threads that flush finished files.
const SYNCERS: usize = 2;

/// What was unpacked: each regular file's size and CRC-32C (by its path in
/// the tar), and the manifest if the tar had one.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub files: BTreeMap<String, (u64, u32)>,
    pub manifest: Option<Vec<u8>>,
}

fn bad(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

/// `name` (from the tar) as a plain relative path (`./pg_wal/x` is
/// `pg_wal/x`), or an error for one that would leave the directory
/// (absolute, `..`).
fn relative(name: &Path) -> std::io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => {
                return Err(bad(format!(
                    "the tar names {}, outside the data directory",
                    name.display()
                )));
            }
        }
    }
    Ok(out)
}

/// Unpacks `reader` (a tar) into `into`, which exists and is empty.
///
/// # Errors
/// Reading, a path outside `into`, writing or flushing a file.
pub fn unpack(reader: impl Read, into: &Path) -> std::io::Result<Unpacked> {
    let (tx, rx) = mpsc::sync_channel::<std::fs::File>(64);
    let rx = Arc::new(Mutex::new(rx));
    let syncers: Vec<_> = (0..SYNCERS)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                loop {
                    let next = rx
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    match next {
                        Ok(file) => file.sync_all()?,
                        Err(_) => return Ok(()),
                    }
                }
            })
        })
        .collect();
    let written = write_entries(reader, into, &tx);
    drop(tx);
    let mut synced = Ok(());
    for s in syncers {
        let r = s
            .join()
            .unwrap_or_else(|_| Err(bad("a sync thread panicked".into())));
        if synced.is_ok() {
            synced = r;
        }
    }
    let unpacked = written?;
    synced?;
    Ok(unpacked)
}

fn write_entries(
    reader: impl Read,
    into: &Path,
    syncer: &mpsc::SyncSender<std::fs::File>,
) -> std::io::Result<Unpacked> {
    use std::os::unix::fs::PermissionsExt;
    let mut archive = tar::Archive::new(reader);
    let mut out = Unpacked::default();
    let mut dirs = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = relative(&entry.path()?)?;
        let path = into.join(&name);
        let mode = entry.header().mode().unwrap_or(0o600) & 0o777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o700))?;
                dirs.push(path);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                let (mut size, mut crc) = (0u64, 0u32);
                let keep = name.as_os_str() == "backup_manifest";
                let mut kept = Vec::new();
                loop {
                    let n = entry.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&buf[..n])?;
                    crc = crc32c::crc32c_append(crc, &buf[..n]);
                    size += n as u64;
                    if keep {
                        kept.extend_from_slice(&buf[..n]);
                    }
                }
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                if keep {
                    out.manifest = Some(kept);
                }
                out.files
                    .insert(name.to_string_lossy().into_owned(), (size, crc));
                syncer
                    .send(file)
                    .map_err(|_| bad("the sync threads stopped".into()))?;
            }
            // Anything else (links) by the tar crate's own rules.
            _ => {
                entry.unpack_in(into)?;
            }
        }
    }
    for d in dirs {
        std::fs::File::open(&d)?.sync_all()?;
    }
    std::fs::File::open(into)?.sync_all()?;
    Ok(out)
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "Files")]
    files: Vec<ManifestFile>,
}

#[derive(Deserialize)]
struct ManifestFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

/// Files the server's manifest does not list and `pg_verifybackup` ignores.
fn ignored(path: &str) -> bool {
    matches!(
        path,
        "backup_manifest" | "postgresql.auto.conf" | "recovery.signal" | "standby.signal"
    ) || path.starts_with("pg_wal/")
}

/// Whether `unpacked` is what the server's manifest lists: every file
/// present with its size and CRC-32C, none missing, none extra. `Ok(false)`
/// when the manifest uses another checksum than CRC-32C (then
/// `pg_verifybackup` must check it).
///
/// # Errors
/// The first few differences, named.
pub fn matches_manifest(unpacked: &Unpacked, manifest: &[u8]) -> Result<bool, String> {
    let m: Manifest =
        serde_json::from_slice(manifest).map_err(|e| format!("backup_manifest: {e}"))?;
    let mut problems = Vec::new();
    let mut listed = std::collections::BTreeSet::new();
    for f in &m.files {
        let path = match (&f.path, &f.encoded_path) {
            (Some(p), _) => p.clone(),
            (None, Some(hex_path)) => hex::decode(hex_path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| format!("backup_manifest: {e}"))?,
            (None, None) => return Err("backup_manifest: a file without a path".into()),
        };
        match f.algorithm.as_deref() {
            Some("CRC32C") | None => {}
            Some(_) => return Ok(false),
        }
        listed.insert(path.clone());
        match unpacked.files.get(&path) {
            None => problems.push(format!("{path} is missing")),
            Some((size, _)) if *size != f.size => {
                problems.push(format!(
                    "{path} has {size} bytes, the manifest says {}",
                    f.size
                ));
            }
            Some((_, crc)) => {
                let ours = hex::encode(crc.to_le_bytes());
                if f.checksum.as_deref().is_some_and(|c| c != ours) {
                    problems.push(format!(
                        "{path} has checksum {ours}, the manifest says {}",
                        f.checksum.as_deref().unwrap_or("")
                    ));
                }
            }
        }
    }
    for path in unpacked.files.keys() {
        if !listed.contains(path) && !ignored(path) {
            problems.push(format!("{path} is not in the manifest"));
        }
    }
    if problems.is_empty() {
        Ok(true)
    } else {
        let n = problems.len();
        problems.truncate(3);
        Err(format!(
            "{n} file(s) differ from the server's backup_manifest: {}",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn manifest(files: &[(&str, &[u8])]) -> Vec<u8> {
        let files: Vec<serde_json::Value> = files
            .iter()
            .map(|(p, d)| {
                serde_json::json!({ "Path": p, "Size": d.len(), "Checksum-Algorithm": "CRC32C",
                    "Checksum": hex::encode(crc32c::crc32c(d).to_le_bytes()) })
            })
            .collect();
        serde_json::to_vec(
            &serde_json::json!({ "PostgreSQL-Backup-Manifest-Version": 1, "Files": files }),
        )
        .unwrap()
    }

    #[test]
    fn files_are_written_with_their_checksums_and_compared_with_the_manifest() {
        let files: [(&str, &[u8]); 2] = [("PG_VERSION", b"15\n"), ("base/1/1259", &[7u8; 300_000])];
        let m = manifest(&files);
        let mut members = files.to_vec();
        members.push(("pg_wal/000000010000000000000002", &[1u8; 100]));
        members.push(("backup_manifest", &m));
        let dir = tempfile::tempdir().unwrap();
        let unpacked = unpack(&tar_of(&members)[..], dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("PG_VERSION")).unwrap(),
            b"15\n"
        );
        assert_eq!(unpacked.files["base/1/1259"].0, 300_000);
        assert_eq!(
            matches_manifest(&unpacked, unpacked.manifest.as_ref().unwrap()),
            Ok(true)
        );
        // A file that changed, one missing, one extra: named.
        let other = manifest(&[
            ("PG_VERSION", b"16\n"),
            ("base/1/1259", &[7u8; 300_000]),
            ("global/pg_control", b"x"),
        ]);
        let mut extra = unpacked;
        extra.files.insert("stray".into(), (1, 0));
        let e = matches_manifest(&extra, &other).unwrap_err();
        assert!(e.contains("PG_VERSION has checksum"), "{e}");
        assert!(e.contains("global/pg_control is missing"), "{e}");
        assert!(e.contains("stray is not in the manifest"), "{e}");
    }

    #[test]
    fn a_path_outside_the_directory_is_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o600);
        // set_path refuses "..": write the name into the header by hand.
        header.as_old_mut().name[..11].copy_from_slice(b"../escape.x");
        header.set_cksum();
        builder.append(&header, &b"x"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("data");
        std::fs::create_dir(&inner).unwrap();
        let e = unpack(&bytes[..], &inner).unwrap_err();
        assert!(e.to_string().contains("outside the data directory"), "{e}");
        assert!(!dir.path().join("escape.x").exists());
    }
}
