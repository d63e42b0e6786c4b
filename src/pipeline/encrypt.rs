//! Encryption format version 1: a header, then fixed-size AES-256-GCM chunks.
//!
//! The layout is specified in `docs/format.md`. In short: the file key is
//! HKDF-SHA256(master key, per-file salt, `strata/v1/payload`); chunk `i` is sealed
//! with nonce = 11-byte big-endian `i` ‖ last-flag and the whole header as associated
//! data, so truncation, reordering, splicing between files and header tampering all
//! fail authentication.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};

use std::sync::Arc;

use crate::domain::MAX_CHUNK_SIZE;
use crate::keys::{Keyring, MasterKey};

/// File magic of format version 1.
pub const MAGIC: &[u8; 8] = b"STRATAE1";
/// Algorithm byte for AES-256-GCM.
pub const ALG_AES_256_GCM: u8 = 1;
/// Length of the per-file salt.
pub const SALT_LEN: usize = 32;
/// Length of the GCM tag after each chunk.
pub const TAG_LEN: usize = 16;
const INFO: &[u8] = b"strata/v1/payload";
/// Chunk counters are 11 bytes (88 bits) wide.
const COUNTER_LIMIT: u128 = 1 << 88;

/// Why a stream could not be encrypted or decrypted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("not a strata encrypted stream (bad magic; expected STRATAE1)")]
    BadMagic,
    #[error("unsupported encryption algorithm {0} in header")]
    UnsupportedAlgorithm(u8),
    #[error("bad header: chunk size {0} is out of range")]
    BadChunkSize(u32),
    #[error("bad header: key id is not UTF-8")]
    BadKeyId,
    #[error("input ends inside the header")]
    TruncatedHeader,
    #[error("encrypted with key '{0}', which is not configured")]
    UnknownKey(String),
    #[error(
        "chunk {0} does not authenticate: wrong key, or the data was corrupted, cut short or tampered with"
    )]
    Tampered(u128),
    #[error("truncated: the stream ends after chunk {0} without its final chunk")]
    Truncated(u128),
    #[error("trailing data after the final chunk {0}")]
    TrailingData(u128),
    #[error("chunk counter overflow")]
    CounterOverflow,
    #[error("the system random number generator failed")]
    Random,
}

/// The fixed header of one encrypted stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub chunk_size: u32,
    pub key_id: String,
    pub salt: [u8; SALT_LEN],
}

impl Header {
    /// Serialises the header exactly as it is stored (and authenticated).
    pub fn to_bytes(&self) -> Vec<u8> {
        let id = self.key_id.as_bytes();
        let mut out = Vec::with_capacity(8 + 1 + 4 + 1 + id.len() + SALT_LEN);
        out.extend_from_slice(MAGIC);
        out.push(ALG_AES_256_GCM);
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.push(u8::try_from(id.len()).expect("key ids are at most 255 bytes"));
        out.extend_from_slice(id);
        out.extend_from_slice(&self.salt);
        out
    }

    /// Parses a header from the start of `buf`; `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// Bad magic, algorithm, chunk size or key id.
    pub fn parse(buf: &[u8]) -> Result<Option<(Self, usize)>, CryptoError> {
        let prefix = buf.len().min(MAGIC.len());
        if buf[..prefix] != MAGIC[..prefix] {
            return Err(CryptoError::BadMagic);
        }
        if buf.len() < 14 {
            return Ok(None);
        }
        if buf[8] != ALG_AES_256_GCM {
            return Err(CryptoError::UnsupportedAlgorithm(buf[8]));
        }
        let chunk_size = u32::from_be_bytes(buf[9..13].try_into().expect("4 bytes"));
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(CryptoError::BadChunkSize(chunk_size));
        }
        let id_len = usize::from(buf[13]);
        let total = 14 + id_len + SALT_LEN;
        if buf.len() < total {
            return Ok(None);
        }
        let key_id = std::str::from_utf8(&buf[14..14 + id_len])
            .map_err(|_| CryptoError::BadKeyId)?
            .to_owned();
        let salt = buf[14 + id_len..total].try_into().expect("salt length");
        Ok(Some((
            Self {
                chunk_size,
                key_id,
                salt,
            },
            total,
        )))
    }
}

fn file_key(master: &MasterKey, salt: &[u8; SALT_LEN]) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, salt).extract(master.expose());
    let okm = prk
        .expand(&[INFO], &AES_256_GCM)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

fn nonce(counter: u128, last: bool) -> Result<Nonce, CryptoError> {
    if counter >= COUNTER_LIMIT {
        return Err(CryptoError::CounterOverflow);
    }
    let mut n = [0u8; NONCE_LEN];
    n[..11].copy_from_slice(&counter.to_be_bytes()[16 - 11..]);
    n[11] = u8::from(last);
    Ok(Nonce::assume_unique_for_key(n))
}

/// Streaming encryptor: feed plaintext with [`Encryptor::update`], end with
/// [`Encryptor::finish`]. Output is appended to caller-provided buffers.
pub struct Encryptor {
    key: LessSafeKey,
    header: Vec<u8>,
    chunk_size: usize,
    counter: u128,
    pending: Vec<u8>,
    header_written: bool,
}

impl Encryptor {
    /// A new stream under `master` with a fresh random salt.
    ///
    /// # Errors
    /// The system random generator failed.
    pub fn new(master: &MasterKey, chunk_size: u32) -> Result<Self, CryptoError> {
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| CryptoError::Random)?;
        Ok(Self::with_salt(master, chunk_size, salt))
    }

    /// A stream with a caller-chosen salt: only for known-answer tests.
    pub fn with_salt(master: &MasterKey, chunk_size: u32, salt: [u8; SALT_LEN]) -> Self {
        assert!(chunk_size > 0 && chunk_size <= MAX_CHUNK_SIZE);
        let header = Header {
            chunk_size,
            key_id: master.id().to_owned(),
            salt,
        };
        Self {
            key: file_key(master, &salt),
            header: header.to_bytes(),
            chunk_size: chunk_size as usize,
            counter: 0,
            pending: Vec::with_capacity(chunk_size as usize + TAG_LEN),
            header_written: false,
        }
    }

    fn write_header(&mut self, out: &mut Vec<u8>) {
        if !self.header_written {
            out.extend_from_slice(&self.header);
            self.header_written = true;
        }
    }

    fn seal_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let nonce = nonce(self.counter, last)?;
        let start = out.len();
        out.extend_from_slice(&self.pending);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&self.header), &mut out[start..])
            .expect("AES-GCM sealing cannot fail for chunk-sized input");
        out.extend_from_slice(tag.as_ref());
        self.pending.clear();
        self.counter += 1;
        Ok(())
    }

    /// Encrypts `input`, appending every chunk known not to be the last to `out`.
    ///
    /// # Errors
    /// Counter overflow.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.write_header(out);
        while !input.is_empty() {
            if self.pending.len() == self.chunk_size {
                self.seal_pending(false, out)?;
            }
            let take = (self.chunk_size - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        Ok(())
    }

    /// Seals the final chunk (empty only when the whole payload was empty).
    ///
    /// # Errors
    /// Counter overflow.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.write_header(out);
        self.seal_pending(true, out)
    }

    #[cfg(test)]
    fn set_counter(&mut self, counter: u128) {
        self.counter = counter;
    }
}

/// Streaming decryptor. Only authenticated plaintext is ever appended to `out`.
pub struct Decryptor {
    keys: KeySource,
    buf: Vec<u8>,
    /// Copy of the chunk being opened: a failed open may clobber its input, and the
    /// copy lets the error say whether the chunk was a misplaced final chunk.
    scratch: Vec<u8>,
    state: DecryptState,
}

enum KeySource {
    Ring(Arc<Keyring>),
    Single(Arc<MasterKey>),
}

enum DecryptState {
    Header,
    Body {
        key: Box<LessSafeKey>,
        header: Vec<u8>,
        chunk_size: usize,
        counter: u128,
    },
    Done {
        last_chunk: u128,
    },
}

impl Decryptor {
    /// Decrypts with whichever configured key the header names.
    pub fn new(keys: Arc<Keyring>) -> Self {
        Self::from_source(KeySource::Ring(keys))
    }

    /// Decrypts with exactly this key, whatever id the header carries
    /// (recovery by hand with a key file).
    pub fn with_key(key: Arc<MasterKey>) -> Self {
        Self::from_source(KeySource::Single(key))
    }

    fn from_source(keys: KeySource) -> Self {
        Self {
            keys,
            buf: Vec::new(),
            scratch: Vec::new(),
            state: DecryptState::Header,
        }
    }

    /// Decrypts as much of `input` as can be authenticated so far.
    ///
    /// # Errors
    /// Any malformed, tampered or trailing data.
    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        if let DecryptState::Done { last_chunk } = self.state {
            if !input.is_empty() {
                return Err(CryptoError::TrailingData(last_chunk));
            }
            return Ok(());
        }
        self.buf.extend_from_slice(input);
        let mut consumed = 0;
        if matches!(self.state, DecryptState::Header) {
            let Some((header, len)) = Header::parse(&self.buf)? else {
                return Ok(());
            };
            let master = match &self.keys {
                KeySource::Ring(ring) => ring
                    .get(&header.key_id)
                    .ok_or_else(|| CryptoError::UnknownKey(header.key_id.clone()))?,
                KeySource::Single(key) => key,
            };
            self.state = DecryptState::Body {
                key: Box::new(file_key(master, &header.salt)),
                header: self.buf[..len].to_vec(),
                chunk_size: header.chunk_size as usize,
                counter: 0,
            };
            consumed = len;
        }
        let Self {
            buf,
            scratch,
            state,
            ..
        } = self;
        if let DecryptState::Body {
            key,
            header,
            chunk_size,
            counter,
        } = state
        {
            let sealed = *chunk_size + TAG_LEN;
            // A full chunk followed by at least one more byte cannot be the last one.
            while buf.len() - consumed > sealed {
                let chunk = &mut buf[consumed..consumed + sealed];
                scratch.clear();
                scratch.extend_from_slice(chunk);
                let not_last = nonce(*counter, false)?;
                match key.open_in_place(not_last, Aad::from(&header[..]), chunk) {
                    Ok(plain) => out.extend_from_slice(plain),
                    Err(_) => {
                        // Say "trailing data" when this was a valid final chunk.
                        let n = nonce(*counter, true)?;
                        return Err(
                            if key
                                .open_in_place(n, Aad::from(&header[..]), scratch)
                                .is_ok()
                            {
                                CryptoError::TrailingData(*counter)
                            } else {
                                CryptoError::Tampered(*counter)
                            },
                        );
                    }
                }
                consumed += sealed;
                *counter += 1;
            }
        }
        buf.drain(..consumed);
        Ok(())
    }

    /// Checks that the stream ended with its final chunk and appends its plaintext.
    ///
    /// # Errors
    /// Truncation (no final chunk), a chunk that does not authenticate.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        match std::mem::replace(&mut self.state, DecryptState::Done { last_chunk: 0 }) {
            DecryptState::Header => Err(if self.buf.is_empty() {
                CryptoError::TruncatedHeader
            } else {
                Header::parse(&self.buf)?;
                CryptoError::TruncatedHeader
            }),
            DecryptState::Done { last_chunk } => {
                self.state = DecryptState::Done { last_chunk };
                Ok(())
            }
            DecryptState::Body {
                key,
                header,
                counter,
                ..
            } => {
                if self.buf.len() < TAG_LEN {
                    return Err(CryptoError::Truncated(counter.saturating_sub(1)));
                }
                let original = std::mem::take(&mut self.buf);
                let mut chunk = original.clone();
                let opened = key
                    .open_in_place(nonce(counter, true)?, Aad::from(&header[..]), &mut chunk)
                    .map(|p| p.len());
                match opened {
                    Ok(len) => {
                        out.extend_from_slice(&chunk[..len]);
                        self.state = DecryptState::Done {
                            last_chunk: counter,
                        };
                        Ok(())
                    }
                    Err(_) => {
                        let mut copy = original;
                        Err(
                            if key
                                .open_in_place(
                                    nonce(counter, false)?,
                                    Aad::from(&header[..]),
                                    &mut copy,
                                )
                                .is_ok()
                            {
                                CryptoError::Truncated(counter)
                            } else {
                                CryptoError::Tampered(counter)
                            },
                        )
                    }
                }
            }
        }
    }
}

/// Encrypts a whole buffer in one call (tests, small payloads).
///
/// # Errors
/// The random generator failed.
pub fn encrypt_all(
    master: &MasterKey,
    chunk_size: u32,
    plain: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut enc = Encryptor::new(master, chunk_size)?;
    let mut out = Vec::new();
    enc.update(plain, &mut out)?;
    enc.finish(&mut out)?;
    Ok(out)
}

/// Decrypts a whole buffer in one call (tests, small payloads).
///
/// # Errors
/// Anything [`Decryptor`] rejects.
pub fn decrypt_all(keys: &Arc<Keyring>, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut dec = Decryptor::new(keys.clone());
    let mut out = Vec::new();
    dec.update(sealed, &mut out)?;
    dec.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
