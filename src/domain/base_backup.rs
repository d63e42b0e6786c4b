//! What a base backup says of itself: the server's `backup_manifest`
//! (PostgreSQL 13+: every file with its size and checksum, and the WAL range
//! the backup needs) and its `backup_label`. No I/O.

use serde::Deserialize;

use super::manifest::ServerManifest;
use super::wal::parse_lsn;

/// The WAL a base backup needs to be consistent, on one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start: u64,
    pub end: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    files: Vec<RawFile>,
    #[serde(rename = "WAL-Ranges")]
    wal_ranges: Vec<RawRange>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    checksum_algorithm: Option<String>,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start: String,
    #[serde(rename = "End-LSN")]
    end: String,
}

/// Reads a `backup_manifest`: its summary for strata's manifest (with
/// `sha256` of the file as given) and the WAL ranges.
///
/// # Errors
/// It is not a backup manifest strata understands (named).
pub fn parse_server_manifest(
    bytes: &[u8],
    sha256: &str,
) -> Result<(ServerManifest, Vec<WalRange>), String> {
    let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if raw.version != 1 {
        return Err(format!("manifest version {} is not 1", raw.version));
    }
    let ranges = raw
        .wal_ranges
        .iter()
        .map(|r| {
            Ok(WalRange {
                timeline: r.timeline,
                start: parse_lsn(&r.start).ok_or_else(|| format!("'{}' is not an LSN", r.start))?,
                end: parse_lsn(&r.end).ok_or_else(|| format!("'{}' is not an LSN", r.end))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if ranges.is_empty() {
        return Err("it names no WAL range".into());
    }
    let algorithm = raw
        .files
        .iter()
        .find_map(|f| f.checksum_algorithm.clone())
        .unwrap_or_else(|| "NONE".into());
    Ok((
        ServerManifest {
            files: raw.files.len() as u64,
            bytes: raw.files.iter().map(|f| f.size).sum(),
            checksum_algorithm: algorithm,
            sha256: sha256.to_owned(),
        },
        ranges,
    ))
}

/// The `LABEL:` line of a backup label or backup history file.
pub fn label_of(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("LABEL:"))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "backup_label", "Size": 225, "Last-Modified": "2026-12-07 16:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "c7a5e0c4" },
{ "Path": "global/pg_control", "Size": 8192, "Last-Modified": "2026-12-07 16:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "0f6a2e3b" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "abc"}
"#;

    #[test]
    fn a_server_manifest_gives_files_sizes_and_the_wal_range() {
        let (m, ranges) = parse_server_manifest(MANIFEST.as_bytes(), "ff").unwrap();
        assert_eq!((m.files, m.bytes), (2, 225 + 8192));
        assert_eq!(m.checksum_algorithm, "CRC32C");
        assert_eq!(
            ranges,
            [WalRange {
                timeline: 1,
                start: 0x200_0028,
                end: 0x200_0100
            }]
        );
    }

    #[test]
    fn anything_else_is_named() {
        assert!(parse_server_manifest(b"{}", "").is_err());
        let v2 = MANIFEST.replace(
            "\"PostgreSQL-Backup-Manifest-Version\": 1",
            "\"PostgreSQL-Backup-Manifest-Version\": 2",
        );
        assert!(
            parse_server_manifest(v2.as_bytes(), "")
                .unwrap_err()
                .contains("version 2")
        );
        let no_wal = MANIFEST.replace(
            "{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }",
            "",
        );
        assert!(parse_server_manifest(no_wal.as_bytes(), "").is_err());
    }

    #[test]
    fn the_label_line_is_found() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nLABEL: strata prod_base_20261207_160000\nSTART TIMELINE: 1\n";
        assert_eq!(label_of(text), Some("strata prod_base_20261207_160000"));
        assert_eq!(label_of("nothing"), None);
    }
}
