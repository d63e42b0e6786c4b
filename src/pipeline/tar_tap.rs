//! Reads a base backup's tar as it streams past, for the two members that
//! describe the backup: `backup_label` (first) and `backup_manifest` (last,
//! put there by `pg_basebackup --pgdata=-`). Headers are parsed with the tar
//! crate's [`tar::Header`]; the data of every other member is passed over by
//! position, never copied (the stream is the whole cluster).

/// The files a base backup's tar carries about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseFiles {
    /// `backup_label` (start position, checkpoint, label).
    pub backup_label: Option<Vec<u8>>,
    /// `backup_manifest` (every file with its size and checksum, the WAL range).
    pub backup_manifest: Option<Vec<u8>>,
}

const BLOCK: usize = 512;
/// Larger members than this are not kept (a manifest of a huge cluster
/// included: the backup itself is unaffected, only its summary is missing).
const KEEP_AT_MOST: u64 = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Label,
    Manifest,
}

/// Walks a tar stream fed in pieces of any size.
#[derive(Debug, Default)]
pub struct TarTap {
    header: Vec<u8>,
    /// Bytes of the current member (data and padding) still to pass over.
    skip: u64,
    /// The member being kept, its bytes so far and how many are still to come.
    keep: Option<(Member, Vec<u8>, u64)>,
    /// Padding after the kept member.
    padding: u64,
    ended: bool,
    found: BaseFiles,
}

impl TarTap {
    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.ended {
            if let Some((member, kept, left)) = &mut self.keep {
                let n = bytes
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                kept.extend_from_slice(&bytes[..n]);
                *left -= n as u64;
                bytes = &bytes[n..];
                if *left == 0 {
                    let text = std::mem::take(kept);
                    match member {
                        Member::Label => self.found.backup_label = Some(text),
                        Member::Manifest => self.found.backup_manifest = Some(text),
                    }
                    self.keep = None;
                    self.skip = self.padding;
                }
                continue;
            }
            if self.skip > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = bytes.len().min(BLOCK - self.header.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == BLOCK {
                self.next_member();
            }
        }
    }

    /// A whole header block has arrived.
    fn next_member(&mut self) {
        if self.header.iter().all(|b| *b == 0) {
            // The end-of-archive marker.
            self.ended = true;
            return;
        }
        let header = tar::Header::from_byte_slice(&self.header);
        // Not a tar header (its checksum does not add up): stop looking.
        let mut expected = header.clone();
        expected.set_cksum();
        let size = header.entry_size().ok();
        let padded = size.and_then(|s| s.div_ceil(BLOCK as u64).checked_mul(BLOCK as u64));
        let (Some(size), Some(padded), true) =
            (size, padded, header.cksum().ok() == expected.cksum().ok())
        else {
            self.ended = true;
            return;
        };
        let member = match &*header.path_bytes() {
            b"backup_label" => Some(Member::Label),
            b"backup_manifest" => Some(Member::Manifest),
            _ => None,
        };
        self.header.clear();
        match member {
            Some(m) if size > 0 && size <= KEEP_AT_MOST => {
                self.keep = Some((m, Vec::with_capacity(size as usize), size));
                self.padding = padded - size;
            }
            _ => self.skip = padded,
        }
    }

    /// What was found.
    pub fn finish(self) -> BaseFiles {
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn the_label_and_manifest_are_kept_whatever_the_piece_sizes() {
        let big = vec![7u8; 100_000];
        let bytes = tar_of(&[
            ("backup_label", b"LABEL: strata x\n"),
            ("base/1/1259", &big),
            ("global/pg_control", &[1, 2, 3]),
            (
                "backup_manifest",
                b"{\"PostgreSQL-Backup-Manifest-Version\": 1}",
            ),
        ]);
        for piece in [1, 7, 511, 512, 513, 4096, 1 << 20] {
            let mut tap = TarTap::default();
            for chunk in bytes.chunks(piece) {
                tap.feed(chunk);
            }
            let found = tap.finish();
            assert_eq!(
                found.backup_label.as_deref(),
                Some(&b"LABEL: strata x\n"[..]),
                "{piece}"
            );
            assert_eq!(
                found.backup_manifest.as_deref(),
                Some(&b"{\"PostgreSQL-Backup-Manifest-Version\": 1}"[..]),
                "{piece}"
            );
        }
    }

    #[test]
    fn a_stream_that_is_not_tar_yields_nothing_and_does_not_panic() {
        let mut tap = TarTap::default();
        tap.feed(&[0xFFu8; 10_000]);
        tap.feed(b"not a tar");
        assert_eq!(tap.finish(), BaseFiles::default());
    }
}
