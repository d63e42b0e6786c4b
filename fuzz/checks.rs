//! What each fuzz target asserts. Shared with `tests/it/fuzzed.rs`, which replays
//! every kept input (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`)
//! through the same functions in the ordinary test run.
//!
//! Every function takes arbitrary bytes, must never panic, and returns whether
//! the input was accepted; the assertions inside are the properties.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use strata::config::Config;
use strata::domain::manifest::{self, Manifest, Trust};
use strata::keys::{Keyring, MasterKey};
use strata::pipeline::encrypt;

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected,
}

fn master() -> MasterKey {
    MasterKey::from_bytes("fuzz", [7; 32])
}

fn keyring() -> Arc<Keyring> {
    Arc::new(Keyring::new("fuzz", vec![master()]).expect("one key"))
}

fn feed_in_pieces(keys: &Arc<Keyring>, data: &[u8], piece: usize) -> Result<Vec<u8>, String> {
    let mut dec = encrypt::Decryptor::new(keys.clone());
    let mut out = Vec::new();
    for chunk in data.chunks(piece) {
        dec.update(chunk, &mut out).map_err(|e| e.to_string())?;
    }
    dec.finish(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Format v1 decryption. The first byte picks what the rest is:
/// - even: a stream from storage. Fed whole and in pieces of `byte / 2 + 1`
///   bytes, both give the same answer; plaintext is never longer than the input.
/// - odd: plaintext, sealed with the fuzz key in chunks of a size taken from the
///   second byte. It opens to itself; changing any one byte (position from the
///   input), cutting it short anywhere, or adding a byte is refused.
pub fn decrypt(data: &[u8]) -> Outcome {
    let Some((&mode, rest)) = data.split_first() else {
        return Outcome::Rejected;
    };
    let keys = keyring();
    if mode % 2 == 0 {
        let whole = encrypt::decrypt_all(&keys, rest).map_err(|e| e.to_string());
        let piece = usize::from(mode / 2) + 1;
        let split = feed_in_pieces(&keys, rest, piece);
        assert_eq!(whole, split, "whole and pieces of {piece} bytes disagree");
        match whole {
            Ok(plain) => {
                assert!(plain.len() <= rest.len());
                Outcome::Accepted
            }
            Err(_) => Outcome::Rejected,
        }
    } else {
        let Some((&size, plain)) = rest.split_first() else {
            return Outcome::Rejected;
        };
        let chunk_size = 1 + u32::from(size) * 3;
        let sealed = encrypt::encrypt_all(&master(), chunk_size, plain).expect("sealing works");
        let opened = encrypt::decrypt_all(&keys, &sealed).expect("its own ciphertext opens");
        assert_eq!(opened, plain);
        let at = (usize::from(mode) * 7919 + plain.len() * 31) % sealed.len();
        let mut changed = sealed.clone();
        changed[at] ^= 1 << (mode % 8);
        assert!(
            encrypt::decrypt_all(&keys, &changed).is_err(),
            "a change at byte {at} of {} was accepted",
            sealed.len()
        );
        assert!(
            encrypt::decrypt_all(&keys, &sealed[..at]).is_err(),
            "cut to {at} of {} bytes was accepted",
            sealed.len()
        );
        let mut longer = sealed.clone();
        longer.push(mode);
        assert!(
            encrypt::decrypt_all(&keys, &longer).is_err(),
            "a trailing byte was accepted"
        );
        Outcome::Accepted
    }
}

/// A genuine manifest (of a table named `Odd "name"`), without its MAC.
const GENUINE: &str = r#"{
  "format_version": 1,
  "backup_id": "app_backup_20261202_011540",
  "job": "app",
  "started_at": "2026-12-02T06:15:40.795757665Z",
  "finished_at": "2026-12-02T06:15:40.952168901Z",
  "database": { "name": "fzsrc", "server_version": "15.20 (Debian 15.20-0+deb12u1)" },
  "pg_dump_version": "15.20",
  "format": "plain",
  "compression": "gzip:6",
  "encryption": { "algorithm": "AES-256-GCM", "format": "STRATAE1", "key_id": "fuzz", "chunk_size": 65536 },
  "object": "app_backup_20261202_011540.sql.gz.enc",
  "raw_bytes": 1612,
  "stored_bytes": 772,
  "sha256": "132501ceafd76de47084fd14c4114d0a3076c299197d1b4fd5d4bedb50f2986d",
  "tables": { "public.\"Odd \"\"name\"": 0, "public.events": 10 },
  "targets": [ { "target": "local", "key": "database-backups/app/2026/12/02/app_backup_20261202_011540.sql.gz.enc", "version_id": null, "storage_class": null } ],
  "verifications": [],
  "globals": { "object": "app_backup_20261202_011540.globals.sql.gz.enc", "raw_bytes": 4807, "stored_bytes": 1206, "sha256": "4ddbd9516dc738ef819a77a2a079773fcaa7faec7fbfff4504897e5cfe75c89b", "roles": 6, "tablespaces": 0, "passwords": false }
}"#;

/// Fields a writer without the key would want to change, as JSON pointers.
const FIELDS: &[&str] = &[
    "/object",
    "/globals/object",
    "/backup_id",
    "/job",
    "/sha256",
    "/raw_bytes",
    "/stored_bytes",
    "/format_version",
    "/format",
    "/compression",
    "/encryption/chunk_size",
    "/encryption/key_id",
    "/targets/0/key",
    "/targets/0/target",
    "/globals/stored_bytes",
    "/database/name",
];

const MANIFEST_KEY: &str =
    "database-backups/app/2026/12/02/app_backup_20261202_011540.manifest.json";

/// What any manifest strata accepts must satisfy, however it was made.
fn holds(m: &Manifest) {
    manifest::validate(m).expect("an accepted manifest validates");
    let dir = MANIFEST_KEY.rsplit_once('/').expect("a directory").0;
    let mut keys = vec![m.object_key(MANIFEST_KEY)];
    keys.extend(m.globals_key(MANIFEST_KEY));
    for key in keys {
        assert!(manifest::safe_key(&key), "unsafe key {key:?}");
        let name = key
            .strip_prefix(dir)
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or_else(|| panic!("{key:?} leaves {dir}"));
        assert!(!name.contains('/'), "{key:?} leaves {dir}");
    }
    assert!(!m.backup_id.contains('/') && !m.job.contains('/'));
    for t in &m.targets {
        assert!(manifest::safe_key(&t.key), "unsafe target key {:?}", t.key);
    }
    // Sealing what was accepted and reading it back changes nothing.
    let sealed = manifest::seal(m, Some(&master()));
    let (again, trust) =
        manifest::open(&sealed, Some(&keyring()), true).expect("a resealed manifest opens");
    assert_eq!(trust, Trust::Authenticated("fuzz".into()));
    let mut expected = m.clone();
    expected.mac = again.mac.clone();
    assert_eq!(again, expected);
}

/// Manifests read from storage. The first byte picks what the rest is:
/// - below 0x20: a value for one field of a genuine manifest (`FIELDS[byte]`;
///   JSON if it parses, else a string), which is then *sealed with the key* —
///   the MAC proves who wrote it, not that it is sane, so validation alone must
///   stop a hostile value. Unsigned and with a MAC altered afterwards, it is
///   refused when a MAC is required.
/// - anything else: the whole input is a stored manifest, opened without keys,
///   with keys, and with keys and a MAC required; the outcome is the second.
///
/// Whatever is accepted satisfies [`holds`].
pub fn manifest(data: &[u8]) -> Outcome {
    let keys = keyring();
    match data.split_first() {
        Some((&b, rest)) if b < 0x20 => {
            let pointer = FIELDS[usize::from(b) % FIELDS.len()];
            let text = String::from_utf8_lossy(rest);
            let value = serde_json::from_str(&text)
                .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
            let mut doc: serde_json::Value = serde_json::from_str(GENUINE).expect("genuine JSON");
            *doc.pointer_mut(pointer)
                .expect("a field of the genuine manifest") = value;
            let Ok(m) = serde_json::from_value::<Manifest>(doc) else {
                return Outcome::Rejected;
            };
            let sealed = manifest::seal(&m, Some(&master()));
            let opened = manifest::open(&sealed, Some(&keys), true);
            assert_eq!(
                opened.is_ok(),
                manifest::validate(&m).is_ok() && m.format_version == 1,
                "open and validate disagree on {pointer} = {text:?}: {opened:?}"
            );
            let unsigned = manifest::seal(&m, None);
            assert!(manifest::open(&unsigned, Some(&keys), true).is_err());
            let mut forged: serde_json::Value =
                serde_json::from_slice(&sealed).expect("sealed JSON");
            forged["stored_bytes"] = serde_json::json!(m.stored_bytes.wrapping_add(1));
            let forged = serde_json::to_vec(&forged).expect("JSON");
            assert!(
                matches!(
                    manifest::open(&forged, Some(&keys), false),
                    Err(manifest::ManifestError::Forged | manifest::ManifestError::Field { .. })
                ),
                "a manifest changed after sealing was not found forged"
            );
            match opened {
                Ok((m, _)) => {
                    holds(&m);
                    Outcome::Accepted
                }
                Err(_) => Outcome::Rejected,
            }
        }
        _ => {
            let mut outcome = Outcome::Rejected;
            for (keys, require) in [(None, false), (Some(&*keys), false), (Some(&*keys), true)] {
                if let Ok((m, trust)) = manifest::open(data, keys, require) {
                    if require {
                        assert!(matches!(trust, Trust::Authenticated(_)));
                    }
                    holds(&m);
                    // The outcome is what a daemon with the key makes of it.
                    if keys.is_some() && !require {
                        outcome = Outcome::Accepted;
                    }
                }
            }
            outcome
        }
    }
}

/// Config files: any text gives a config or a list of problems, each one line
/// naming where it is; never a panic.
pub fn config(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::Rejected;
    };
    match Config::parse(text, Path::new("fuzz.yaml"), &|_| Some("x".into())) {
        Ok(config) => {
            let _ = config.warnings();
            Outcome::Accepted
        }
        Err(e) => {
            if let strata::config::ConfigError::Invalid { problems, .. } = &e {
                assert!(!problems.is_empty());
                for p in problems {
                    assert!(!p.contains('\n'), "a problem spans lines: {p:?}");
                }
            }
            Outcome::Rejected
        }
    }
}
