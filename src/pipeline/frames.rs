//! Decoding strata's zstd streams on every core. A backup is a sequence of
//! independent zstd frames, one per 1 MiB block, each recording its size
//! ([`crate::pipeline::compress`]); a reader that splits the stream at frame
//! boundaries can decode several side by side and hand them on in order.
//! Any zstd stream decodes (a frame without a recorded size, or a large one,
//! is decoded as a stream); strata's own just decode faster.

use std::io::Read;

/// Frames decoded at once, per core.
const FRAMES_PER_CORE: usize = 2;
/// A frame recording more than this is decoded as a stream, not in one piece.
const LARGEST_PIECE: u64 = 16 << 20;
/// Compressed bytes read ahead at most while looking for a frame's end.
const LARGEST_FRAME: usize = 256 << 20;

/// A `Read` of the decompressed content of the zstd stream `inner`.
pub struct ZstdFrames<R> {
    inner: R,
    input: Vec<u8>,
    start: usize,
    eof: bool,
    out: Vec<u8>,
    out_pos: usize,
    width: usize,
}

impl<R: Read> ZstdFrames<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            input: Vec::with_capacity(8 << 20),
            start: 0,
            eof: false,
            out: Vec::new(),
            out_pos: 0,
            width: super::cpu::cores() * FRAMES_PER_CORE,
        }
    }

    /// Reads more compressed input (first dropping what was decoded, when
    /// `compact` and that is most of the buffer); `false` at its end.
    fn read_more(&mut self, compact: bool) -> std::io::Result<bool> {
        if compact && self.start > 0 && self.start * 2 >= self.input.len() {
            self.input.drain(..self.start);
            self.start = 0;
        }
        let have = self.input.len();
        self.input.resize(have + (1 << 20), 0);
        let n = loop {
            match self.inner.read(&mut self.input[have..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.input.truncate(have);
                    return Err(e);
                }
            }
        };
        self.input.truncate(have + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// The next whole frames (as ranges of `input`), up to `width` of them.
    fn next_frames(&mut self) -> std::io::Result<Vec<std::ops::Range<usize>>> {
        let mut frames = Vec::new();
        let mut at = self.start;
        while frames.len() < self.width {
            let rest = &self.input[at..];
            if rest.is_empty() && self.eof {
                break;
            }
            match zstd::zstd_safe::find_frame_compressed_size(rest) {
                Ok(n) if n > 0 && n <= rest.len() => {
                    frames.push(at..at + n);
                    at += n;
                }
                _ if self.eof => {
                    return Err(std::io::Error::other(format!(
                        "the zstd stream ends inside a frame ({} bytes left)",
                        rest.len()
                    )));
                }
                _ if rest.len() > LARGEST_FRAME => {
                    return Err(std::io::Error::other(
                        "a zstd frame larger than 256 MiB: not a backup strata wrote",
                    ));
                }
                _ => {
                    // More input, until `width` frames are whole; the buffer
                    // moves only while no frame is taken from it yet.
                    let offset = at - self.start;
                    self.read_more(frames.is_empty())?;
                    at = self.start + offset;
                }
            }
        }
        self.start = at;
        Ok(frames)
    }

    /// Decodes the next frames into `out` (reused: no fresh pages per frame).
    fn fill(&mut self) -> std::io::Result<()> {
        use rayon::prelude::*;
        let frames = self.next_frames()?;
        let input = &self.input;
        let sizes: Vec<Option<usize>> = frames
            .iter()
            .map(
                |r| match zstd::zstd_safe::get_frame_content_size(&input[r.clone()]) {
                    Ok(Some(size)) if size <= LARGEST_PIECE => Some(size as usize),
                    _ => None,
                },
            )
            .collect();
        self.out_pos = 0;
        if sizes.iter().all(Option::is_some) {
            // Each frame straight into its place in `out`, side by side.
            let total: usize = sizes.iter().flatten().sum();
            self.out.clear();
            self.out.resize(total, 0);
            let mut places = Vec::with_capacity(frames.len());
            let mut rest = &mut self.out[..];
            for size in sizes.iter().flatten() {
                let (place, tail) = rest.split_at_mut(*size);
                places.push(place);
                rest = tail;
            }
            return frames
                .par_iter()
                .zip(places.into_par_iter())
                .try_for_each(|(r, place)| decode_into(&input[r.clone()], place));
        }
        self.out.clear();
        for r in &frames {
            self.out
                .extend_from_slice(&zstd::stream::decode_all(&input[r.clone()])?);
        }
        Ok(())
    }
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// One frame into `place`, which has exactly the size the frame records.
fn decode_into(frame: &[u8], place: &mut [u8]) -> std::io::Result<()> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        let d = cell.as_mut().expect("set above");
        let n = d.decompress_to_buffer(frame, place)?;
        if n != place.len() {
            return Err(std::io::Error::other(format!(
                "a zstd frame decoded to {n} bytes, it records {}",
                place.len()
            )));
        }
        Ok(())
    })
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.out_pos == self.out.len() {
            if self.eof && self.start == self.input.len() {
                return Ok(0);
            }
            self.fill()?;
            if self.out.is_empty() && self.eof && self.start == self.input.len() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Compression;

    fn stream(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in blocks {
            Compression::Zstd(3).compress_block(b, &mut out).unwrap();
        }
        out
    }

    /// A reader that hands out at most `n` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn many_frames_decode_in_order_whatever_the_reads() {
        let blocks: Vec<Vec<u8>> = (0..23u8)
            .map(|i| {
                (0..(1 << 20) + usize::from(i))
                    .map(|j| (j % 251) as u8 ^ i)
                    .collect()
            })
            .collect();
        let plain: Vec<u8> = blocks.concat();
        let packed = stream(&blocks);
        for trickle in [1 << 20, 4096, 7] {
            let mut out = Vec::new();
            ZstdFrames::new(Trickle(&packed, trickle))
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == plain, "{trickle}");
        }
    }

    #[test]
    fn a_stream_from_another_writer_decodes_too() {
        let plain = vec![5u8; 3 << 20];
        let one_frame = zstd::stream::encode_all(&plain[..], 3).unwrap();
        let mut out = Vec::new();
        ZstdFrames::new(&one_frame[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == plain);
        let mut empty = Vec::new();
        ZstdFrames::new(&[][..]).read_to_end(&mut empty).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn a_cut_or_damaged_stream_is_an_error() {
        let packed = stream(&[vec![1u8; 100_000], vec![2u8; 100_000]]);
        let cut = &packed[..packed.len() - 10];
        assert!(ZstdFrames::new(cut).read_to_end(&mut Vec::new()).is_err());
        let mut damaged = packed.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0xFF;
        let mut out = Vec::new();
        let r = ZstdFrames::new(&damaged[..]).read_to_end(&mut out);
        assert!(r.is_err() || out != [vec![1u8; 100_000], vec![2u8; 100_000]].concat());
    }
}
