//! Write-ahead log files as the archive sees them: the names PostgreSQL gives
//! them (segments, partial segments, timeline histories, backup labels), the
//! long page header at the start of every segment (which says whose segment it
//! is), and where each lives in the archive. No I/O.

use std::fmt;

use super::Compression;

/// One file `archive_command` hands over, or `restore_command` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalFile {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`: a whole segment.
    Segment(SegmentName),
    /// `….partial`: the last, incomplete segment of a timeline left behind by a
    /// promotion (or by `pg_receivewal`).
    Partial(SegmentName),
    /// `….OOOOOOOO.backup`: the label a base backup leaves in the WAL stream.
    BackupLabel(SegmentName, u32),
    /// `TTTTTTTT.history`: how a timeline branched off its parent.
    History(u32),
}

/// A segment's timeline and its position in the WAL (`log`, `seg` as named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub timeline: u32,
    pub log: u32,
    pub seg: u32,
}

/// A file name that is not a WAL file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a WAL file name (a segment, .partial, .backup or .history file)")]
pub struct NotWalName(pub String);

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
    .then(|| u32::from_str_radix(s, 16).ok())
    .flatten()
}

impl SegmentName {
    fn parse(s: &str) -> Option<Self> {
        if s.len() != 24 {
            return None;
        }
        let name = Self {
            timeline: hex8(s.get(0..8)?)?,
            log: hex8(s.get(8..16)?)?,
            seg: hex8(s.get(16..24)?)?,
        };
        (name.timeline > 0).then_some(name)
    }

    /// The segment's number counted from the start of the WAL.
    pub fn number(self, segment_size: u32) -> u64 {
        u64::from(self.log) * (0x1_0000_0000 / u64::from(segment_size)) + u64::from(self.seg)
    }

    /// The segment with number `n` on `timeline`.
    pub fn from_number(timeline: u32, n: u64, segment_size: u32) -> Self {
        let per_log = 0x1_0000_0000 / u64::from(segment_size);
        Self {
            timeline,
            log: u32::try_from(n / per_log).unwrap_or(u32::MAX),
            seg: u32::try_from(n % per_log).unwrap_or(u32::MAX),
        }
    }

    /// The WAL position the segment starts at.
    pub fn start_lsn(self, segment_size: u32) -> u64 {
        self.number(segment_size) * u64::from(segment_size)
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

impl WalFile {
    /// Parses a file name as PostgreSQL writes it.
    ///
    /// # Errors
    /// [`NotWalName`] for anything else (a path, a lower-case name, a stray file).
    pub fn parse(name: &str) -> Result<Self, NotWalName> {
        let bad = || NotWalName(name.to_owned());
        if let Some(seg) = SegmentName::parse(name) {
            return Ok(Self::Segment(seg));
        }
        if let Some(base) = name.strip_suffix(".partial") {
            return SegmentName::parse(base).map(Self::Partial).ok_or_else(bad);
        }
        if let Some(tli) = name.strip_suffix(".history") {
            return hex8(tli)
                .filter(|t| *t > 0)
                .map(Self::History)
                .ok_or_else(bad);
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, offset) = rest.split_once('.').ok_or_else(bad)?;
            return match (SegmentName::parse(seg), hex8(offset)) {
                (Some(s), Some(o)) => Ok(Self::BackupLabel(s, o)),
                _ => Err(bad()),
            };
        }
        Err(bad())
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> u32 {
        match self {
            Self::Segment(s) | Self::Partial(s) | Self::BackupLabel(s, _) => s.timeline,
            Self::History(t) => *t,
        }
    }

    /// The segment, for segments and partial segments.
    pub fn segment(&self) -> Option<SegmentName> {
        match self {
            Self::Segment(s) | Self::Partial(s) => Some(*s),
            _ => None,
        }
    }
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Segment(s) => write!(f, "{s}"),
            Self::Partial(s) => write!(f, "{s}.partial"),
            Self::BackupLabel(s, o) => write!(f, "{s}.{o:08X}.backup"),
            Self::History(t) => write!(f, "{t:08X}.history"),
        }
    }
}

/// Every major version has its own page magic (`XLOG_PAGE_MAGIC`); all of
/// them since 9.4 are `0xD0xx` or `0xD1xx`. The version is not checked here:
/// the header layout has not changed since, and a new major must not stop
/// archiving.
fn is_page_magic(magic: u16) -> bool {
    matches!(magic >> 8, 0xD0 | 0xD1)
}
const XLP_LONG_HEADER: u16 = 0x0002;

/// The long page header at the start of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The page magic (`XLOG_PAGE_MAGIC` of the major version that wrote it).
    pub magic: u16,
    pub timeline: u32,
    /// WAL position of the page (the segment's start).
    pub page_lsn: u64,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

/// Why a file handed over as a segment is not the segment its name says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("{name} is {size} bytes, shorter than a WAL page header")]
    Short { name: String, size: usize },
    #[error(
        "{name} does not start with a WAL segment's page header (magic {magic:#06X}, info {info:#06X})"
    )]
    NotWal { name: String, magic: u16, info: u16 },
    #[error("{name} holds timeline {timeline} at {lsn}, not what its name says")]
    Misnamed {
        name: String,
        timeline: u32,
        lsn: String,
    },
    #[error("{name} is {size} bytes; its header says segments are {segment_size}")]
    Size {
        name: String,
        size: usize,
        segment_size: u32,
    },
}

/// An LSN as PostgreSQL prints it (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses an LSN as PostgreSQL prints it.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl SegmentHeader {
    /// Reads the long page header of `bytes`, the whole content of segment
    /// `name`, and checks that it is the segment the name says (timeline,
    /// position, size). Partial segments may be shorter than a segment.
    ///
    /// # Errors
    /// See [`SegmentError`].
    pub fn check(name: &SegmentName, bytes: &[u8], partial: bool) -> Result<Self, SegmentError> {
        let header = Self::read(name, bytes)?;
        header.check_len(name, bytes.len(), partial)?;
        Ok(header)
    }

    /// Whether a file of `len` bytes can hold the segment this header starts
    /// (a whole segment exactly; a partial one at most).
    ///
    /// # Errors
    /// [`SegmentError::Size`].
    pub fn check_len(
        &self,
        name: &SegmentName,
        len: usize,
        partial: bool,
    ) -> Result<(), SegmentError> {
        let size = self.segment_size as usize;
        if (!partial && len != size) || len > size {
            return Err(SegmentError::Size {
                name: name.to_string(),
                size: len,
                segment_size: self.segment_size,
            });
        }
        Ok(())
    }

    /// Reads the long page header at the start of `bytes` (the first bytes of
    /// segment `name`) and checks it against the name, but not the length.
    ///
    /// # Errors
    /// See [`SegmentError`].
    pub fn read(name: &SegmentName, bytes: &[u8]) -> Result<Self, SegmentError> {
        let label = name.to_string();
        if bytes.len() < 40 {
            return Err(SegmentError::Short {
                name: label,
                size: bytes.len(),
            });
        }
        // XLogLongPageHeaderData, little-endian: magic u16, info u16, tli u32,
        // pageaddr u64, rem_len u32 (padded to 24), sysid u64, seg_size u32,
        // blcksz u32.
        let (magic, info) = (le_u16(bytes, 0), le_u16(bytes, 2));
        if !is_page_magic(magic) || info & XLP_LONG_HEADER == 0 {
            return Err(SegmentError::NotWal {
                name: label,
                magic,
                info,
            });
        }
        let header = Self {
            magic,
            timeline: le_u32(bytes, 4),
            page_lsn: le_u64(bytes, 8),
            system_identifier: le_u64(bytes, 24),
            segment_size: le_u32(bytes, 32),
            block_size: le_u32(bytes, 36),
        };
        let size_ok = header.segment_size.is_power_of_two()
            && (1 << 20..=1 << 30).contains(&header.segment_size);
        if !size_ok {
            return Err(SegmentError::Size {
                name: label,
                size: bytes.len(),
                segment_size: header.segment_size,
            });
        }
        // A segment's first page may carry the timeline it was first written on
        // by a later one only after a switch mid-segment; the name's timeline is
        // the newest, so it is never below the page's.
        if header.page_lsn != name.start_lsn(header.segment_size) || header.timeline > name.timeline
        {
            return Err(SegmentError::Misnamed {
                name: label,
                timeline: header.timeline,
                lsn: format_lsn(header.page_lsn),
            });
        }
        Ok(header)
    }
}

/// The directory under a job's prefix that holds its archive.
pub const WAL_DIR: &str = "wal";

/// `{job_prefix}wal/{timeline}/`: where the files of one timeline are kept
/// (`job_prefix` is `{prefix}/{job}/`).
pub fn timeline_dir(job_prefix: &str, timeline: u32) -> String {
    format!("{job_prefix}{WAL_DIR}/{timeline:08X}/")
}

/// The key of `file` stored with `extension` (`""`, `.zst`, `.gz`, each
/// optionally followed by `.enc`): `{job_prefix}wal/{timeline}/{file}{extension}`.
pub fn object_key(job_prefix: &str, file: &WalFile, extension: &str) -> String {
    format!(
        "{}{file}{extension}",
        timeline_dir(job_prefix, file.timeline())
    )
}

/// A WAL file as the archive holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredWal {
    pub file: WalFile,
    /// How it was compressed (the level is not recorded, nor needed to read it).
    pub compression: Compression,
    pub encrypted: bool,
}

impl StoredWal {
    /// Reads a key of the archive under `job_prefix`; `None` for anything that
    /// is not a WAL file stored where [`object_key`] puts it (`archive.json`,
    /// staging files, a file under another timeline's directory).
    pub fn parse(job_prefix: &str, key: &str) -> Option<Self> {
        let name = key.rsplit('/').next()?;
        let (rest, encrypted) = match name.strip_suffix(".enc") {
            Some(r) => (r, true),
            None => (name, false),
        };
        let (rest, compression) = if let Some(r) = rest.strip_suffix(".zst") {
            (r, Compression::Zstd(3))
        } else if let Some(r) = rest.strip_suffix(".gz") {
            (r, Compression::Gzip(6))
        } else {
            (rest, Compression::None)
        };
        let file = WalFile::parse(rest).ok()?;
        let stored = Self {
            file,
            compression,
            encrypted,
        };
        (object_key(job_prefix, &file, &stored.extension()) == key).then_some(stored)
    }

    /// The extensions after the file's name.
    pub fn extension(&self) -> String {
        extension(self.compression, self.encrypted)
    }
}

/// Whether `key` is part of a WAL archive (a WAL file under
/// `…/wal/{timeline}/`, or `…/wal/archive.json`): such objects stay in
/// STANDARD (a restore reads them at once; retention deletes them).
pub fn is_wal_key(key: &str) -> bool {
    let mut parts = key.rsplit('/');
    let (Some(name), Some(parent)) = (parts.next(), parts.next()) else {
        return false;
    };
    if parent == WAL_DIR {
        return name == "archive.json";
    }
    let timeline_dir = parent.len() == 8 && parent.bytes().all(|b| b.is_ascii_hexdigit());
    if !timeline_dir || parts.next() != Some(WAL_DIR) {
        return false;
    }
    let base = name.strip_suffix(".enc").unwrap_or(name);
    let base = base
        .strip_suffix(".zst")
        .or_else(|| base.strip_suffix(".gz"))
        .unwrap_or(base);
    WalFile::parse(base).is_ok()
}

/// The extensions of a file stored with `compression`, encrypted or not.
pub fn extension(compression: Compression, encrypted: bool) -> String {
    let mut ext = String::new();
    if let Some(c) = compression.extension() {
        ext.push('.');
        ext.push_str(c);
    }
    if encrypted {
        ext.push_str(".enc");
    }
    ext
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_postgresql_writes_parse_and_print_back() {
        for name in [
            "000000010000000000000001",
            "0000000A00000003000000FF",
            "000000020000000100000000.partial",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
        ] {
            assert_eq!(WalFile::parse(name).unwrap().to_string(), name);
        }
        let seg = SegmentName {
            timeline: 1,
            log: 0,
            seg: 3,
        };
        assert_eq!(
            WalFile::parse("000000010000000000000003"),
            Ok(WalFile::Segment(seg))
        );
        assert_eq!(WalFile::parse("00000003.history").unwrap().timeline(), 3);
    }

    #[test]
    fn anything_else_is_refused() {
        for name in [
            "",
            "00000001000000000000000",
            "0000000100000000000000011",
            "000000010000000000000001.gz",
            "00000001000000000000000a",
            "../../etc/passwd",
            "pg_wal/000000010000000000000001",
            "00000000000000000000000A",
            "00000000.history",
            "000000010000000000000002.backup",
            "000000010000000000000002.0000002.backup",
        ] {
            assert!(WalFile::parse(name).is_err(), "{name}");
        }
    }

    #[test]
    fn segment_numbers_follow_the_segment_size() {
        let s = SegmentName {
            timeline: 1,
            log: 1,
            seg: 2,
        };
        assert_eq!(s.number(16 << 20), 256 + 2);
        assert_eq!(s.start_lsn(16 << 20), 0x1_0200_0000);
        assert_eq!(SegmentName::from_number(1, 258, 16 << 20), s);
        assert_eq!(s.number(64 << 20), 64 + 2);
        assert_eq!(SegmentName::from_number(1, 66, 64 << 20), s);
    }

    #[test]
    fn lsns_read_and_print_as_postgresql_does() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0x0100_0028), "0/1000028");
        assert_eq!(parse_lsn("nope"), None);
    }

    fn header(magic: u16, tli: u32, lsn: u64, sysid: u64, size: u32) -> Vec<u8> {
        let mut b = vec![0u8; size as usize];
        b[0..2].copy_from_slice(&magic.to_le_bytes());
        b[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        b[4..8].copy_from_slice(&tli.to_le_bytes());
        b[8..16].copy_from_slice(&lsn.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&size.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn a_segment_says_whose_it_is_and_must_be_what_its_name_says() {
        let size = 1 << 20;
        let name = SegmentName::from_number(1, 5, size);
        let ok = header(
            0xD113,
            1,
            5 * u64::from(size),
            7_000_000_000_000_000_001,
            size,
        );
        let h = SegmentHeader::check(&name, &ok, false).unwrap();
        assert_eq!(
            (h.magic, h.system_identifier, h.segment_size),
            (0xD113, 7_000_000_000_000_000_001, size)
        );
        // Another segment's content under this name.
        let moved = header(0xD113, 1, 6 * u64::from(size), 1, size);
        assert!(matches!(
            SegmentHeader::check(&name, &moved, false),
            Err(SegmentError::Misnamed { .. })
        ));
        // Not WAL at all, cut short, or not a whole segment.
        assert!(matches!(
            SegmentHeader::check(&name, &vec![0u8; size as usize], false),
            Err(SegmentError::NotWal { .. })
        ));
        assert!(matches!(
            SegmentHeader::check(&name, &ok[..20], false),
            Err(SegmentError::Short { .. })
        ));
        assert!(matches!(
            SegmentHeader::check(&name, &ok[..4096], false),
            Err(SegmentError::Size { .. })
        ));
        // A partial segment may be short.
        assert!(SegmentHeader::check(&name, &ok[..4096], true).is_ok());
    }

    #[test]
    fn wal_keys_are_told_from_backups() {
        for key in [
            "p/prod/wal/archive.json",
            "p/prod/wal/00000001/000000010000000000000003.zst.enc",
            "prod/wal/00000002/00000002.history",
        ] {
            assert!(is_wal_key(key), "{key}");
        }
        for key in [
            "p/wal/2025/01/01/wal_backup_20250101_030000.sql.gz.enc",
            "p/prod/base/2025/01/01/prod_base_20250101_030000.tar.zst.enc",
            "p/prod/wal/00000001/notes.txt",
            "archive.json",
        ] {
            assert!(!is_wal_key(key), "{key}");
        }
    }

    #[test]
    fn keys_carry_the_timeline_and_the_name_then_the_extensions() {
        let f = WalFile::parse("000000020000000000000003").unwrap();
        let key = object_key("backups/prod/", &f, ".zst.enc");
        assert_eq!(
            key,
            "backups/prod/wal/00000002/000000020000000000000003.zst.enc"
        );
        let stored = StoredWal::parse("backups/prod/", &key).unwrap();
        assert_eq!(stored.file, f);
        assert!(stored.encrypted);
        assert_eq!(stored.compression.extension(), Some("zst"));
        for (name, ext) in [
            ("00000002.history", ""),
            ("000000020000000000000003.partial", ".gz"),
            ("000000020000000000000003.00000028.backup", ".enc"),
        ] {
            let f = WalFile::parse(name).unwrap();
            let key = object_key("p/j/", &f, ext);
            assert_eq!(StoredWal::parse("p/j/", &key).unwrap().file, f, "{key}");
            assert_eq!(StoredWal::parse("p/j/", &key).unwrap().extension(), ext);
        }
        // Not WAL, or not where its name says.
        for key in [
            "backups/prod/wal/archive.json",
            "backups/prod/wal/00000002/.000000020000000000000003.zst.enc.strata-partial-1",
            "backups/prod/wal/00000001/000000020000000000000003.zst.enc",
            "backups/prod/wal/00000002/000000020000000000000003.enc.zst",
            "backups/other/wal/00000002/000000020000000000000003",
            "backups/prod/wal/00000002/000000020000000000000003.lz4",
        ] {
            assert_eq!(StoredWal::parse("backups/prod/", key), None, "{key}");
        }
    }
}
