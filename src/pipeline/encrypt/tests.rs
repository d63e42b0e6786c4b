use super::*;
use ring::digest::{SHA256, digest};

fn key() -> MasterKey {
    MasterKey::from_bytes("k1", core::array::from_fn(|i| i as u8))
}

fn ring() -> Arc<Keyring> {
    Arc::new(Keyring::new("k1", vec![key()]).unwrap())
}

fn sealed(plain: &[u8], chunk: u32) -> Vec<u8> {
    let mut enc = Encryptor::with_salt(&key(), chunk, [7u8; SALT_LEN]);
    let mut out = Vec::new();
    enc.update(plain, &mut out).unwrap();
    enc.finish(&mut out).unwrap();
    out
}

fn header_len() -> usize {
    14 + 2 + SALT_LEN
}

/// Known answers pinned by an independent implementation (Python
/// `cryptography`: HKDF-SHA256 + AESGCM) in docs/strata_decrypt.py.
#[test]
fn known_answer_small_chunks() {
    let out = sealed(b"hello, strata", 4);
    assert_eq!(
        hex::encode(&out[..header_len()]),
        "53545241544145310100000004026b310707070707070707070707070707070707070707070707070707070707070707"
    );
    assert_eq!(out.len(), header_len() + 4 * TAG_LEN + 13);
    assert_eq!(hex::encode(digest(&SHA256, &out)), KAT_SMALL);
}

#[test]
fn known_answer_empty_payload() {
    let out = sealed(b"", 65_536);
    assert_eq!(out.len(), header_len() + TAG_LEN);
    assert_eq!(hex::encode(digest(&SHA256, &out)), KAT_EMPTY);
}

const KAT_SMALL: &str = "0f88d804baa2ef0788107df47d146b44fa6e3a9d14a56f06ac7bd2ae8c718f4d";
const KAT_EMPTY: &str = "b59f55a13cb8df8d7469d66bebaabc309f08cc36dc3d26a2263fd64adf3ffd70";

#[test]
fn round_trips_at_every_split_and_boundary() {
    for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 100] {
        let plain: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
        let out = sealed(&plain, 16);
        for split in [0, 1, 7, out.len() / 2, out.len()] {
            let mut dec = Decryptor::new(ring());
            let mut got = Vec::new();
            dec.update(&out[..split], &mut got).unwrap();
            dec.update(&out[split..], &mut got).unwrap();
            dec.finish(&mut got).unwrap();
            assert_eq!(got, plain, "len {len} split {split}");
        }
    }
}

#[test]
fn full_final_chunk_is_allowed() {
    let plain = [9u8; 32];
    let out = sealed(&plain, 16);
    assert_eq!(out.len(), header_len() + 2 * (16 + TAG_LEN));
    assert_eq!(decrypt_all(&ring(), &out).unwrap(), plain);
}

#[test]
fn truncation_at_chunk_boundary_is_detected() {
    let out = sealed(&[1u8; 40], 16); // chunks 16, 16, 8
    let cut = header_len() + 2 * (16 + TAG_LEN);
    assert_eq!(
        decrypt_all(&ring(), &out[..cut]),
        Err(CryptoError::Truncated(1))
    );
}

#[test]
fn truncation_mid_chunk_is_detected() {
    let out = sealed(&[1u8; 40], 16);
    let err = decrypt_all(&ring(), &out[..out.len() - 3]).unwrap_err();
    assert_eq!(err, CryptoError::Tampered(2));
    let err = decrypt_all(&ring(), &out[..header_len() + 20]).unwrap_err();
    assert!(
        matches!(err, CryptoError::Tampered(0) | CryptoError::Truncated(_)),
        "{err}"
    );
}

#[test]
fn flipped_bit_is_detected_everywhere() {
    let out = sealed(&[1u8; 40], 16);
    for i in 0..out.len() {
        let mut bad = out.clone();
        bad[i] ^= 0x01;
        assert!(
            decrypt_all(&ring(), &bad).is_err(),
            "flip at byte {i} went unnoticed"
        );
    }
}

#[test]
fn swapped_and_repeated_chunks_are_detected() {
    let out = sealed(&[1u8; 48], 16); // chunks 16, 16, 16(final)
    let h = header_len();
    let c = 16 + TAG_LEN;
    let mut swapped = out[..h].to_vec();
    swapped.extend_from_slice(&out[h + c..h + 2 * c]);
    swapped.extend_from_slice(&out[h..h + c]);
    swapped.extend_from_slice(&out[h + 2 * c..]);
    assert_eq!(
        decrypt_all(&ring(), &swapped),
        Err(CryptoError::Tampered(0))
    );
    let mut repeated = out[..h + c].to_vec();
    repeated.extend_from_slice(&out[h..]);
    assert_eq!(
        decrypt_all(&ring(), &repeated),
        Err(CryptoError::Tampered(1))
    );
}

#[test]
fn trailing_garbage_is_detected() {
    // After a short final chunk the garbage looks like part of that chunk: it
    // fails authentication (telling the two apart would mean trying every split).
    let mut out = sealed(&[1u8; 40], 16);
    out.extend_from_slice(b"garbage");
    assert_eq!(decrypt_all(&ring(), &out), Err(CryptoError::Tampered(2)));
    // After a full-size final chunk it is recognised as trailing data.
    let mut full = sealed(&[1u8; 32], 16);
    full.push(0);
    assert_eq!(
        decrypt_all(&ring(), &full),
        Err(CryptoError::TrailingData(1))
    );
}

#[test]
fn chunk_from_another_backup_is_detected() {
    let a = sealed(&[1u8; 40], 16);
    let b = encrypt_all(&key(), 16, &[1u8; 40]).unwrap();
    let h = header_len();
    let mut spliced = a[..h + 32].to_vec();
    spliced.extend_from_slice(&b[h + 32..]);
    assert_eq!(
        decrypt_all(&ring(), &spliced),
        Err(CryptoError::Tampered(1))
    );
}

#[test]
fn tampered_header_fields_are_detected() {
    let out = sealed(&[1u8; 40], 16);
    let mut magic = out.clone();
    magic[0] = b'X';
    assert_eq!(decrypt_all(&ring(), &magic), Err(CryptoError::BadMagic));
    let mut alg = out.clone();
    alg[8] = 2;
    assert_eq!(
        decrypt_all(&ring(), &alg),
        Err(CryptoError::UnsupportedAlgorithm(2))
    );
    let mut size = out.clone();
    size[12] = 32; // chunk size 16 → 32: same key, different associated data
    assert!(decrypt_all(&ring(), &size).is_err());
    let mut id = out.clone();
    id[15] = b'2';
    assert_eq!(
        decrypt_all(&ring(), &id),
        Err(CryptoError::UnknownKey("k2".into()))
    );
    assert_eq!(
        decrypt_all(&ring(), &out[..10]),
        Err(CryptoError::TruncatedHeader)
    );
}

#[test]
fn wrong_key_is_detected() {
    let out = sealed(b"secret", 16);
    let other = MasterKey::from_bytes("k1", [0u8; 32]);
    let ring = Arc::new(Keyring::new("k1", vec![other]).unwrap());
    assert_eq!(decrypt_all(&ring, &out), Err(CryptoError::Tampered(0)));
}

#[test]
fn rotation_decrypts_with_any_configured_key() {
    let old = sealed(b"old", 16);
    let new_key = MasterKey::from_bytes("k2", [5u8; 32]);
    let ring = Arc::new(Keyring::new("k2", vec![key(), new_key]).unwrap());
    assert_eq!(ring.active().id(), "k2");
    assert_eq!(decrypt_all(&ring, &old).unwrap(), b"old");
}

#[test]
fn fresh_salt_makes_encryptions_differ() {
    let a = encrypt_all(&key(), 16, b"same input").unwrap();
    let b = encrypt_all(&key(), 16, b"same input").unwrap();
    assert_ne!(a, b);
    assert_ne!(a[14 + 2..14 + 2 + SALT_LEN], b[14 + 2..14 + 2 + SALT_LEN]);
}

#[test]
fn counter_overflow_is_an_error() {
    let mut enc = Encryptor::with_salt(&key(), 4, [0u8; SALT_LEN]);
    enc.set_counter(COUNTER_LIMIT - 1);
    let mut out = Vec::new();
    enc.update(b"abcd", &mut out).unwrap();
    enc.update(b"e", &mut out).unwrap(); // seals the chunk with the last counter
    assert_eq!(enc.finish(&mut out), Err(CryptoError::CounterOverflow));
}
