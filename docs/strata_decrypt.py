#!/usr/bin/env python3
"""Reference decryptor for strata's encryption format v1 (docs/format.md).

Independent of the Rust code: it exists to prove the format is specified well
enough to implement elsewhere, and the test suite runs it against real backups.

    python3 strata_decrypt.py KEY_FILE < backup.sql.gz.enc | gunzip | psql
    python3 strata_decrypt.py --verify-manifest KEY_FILE backup.manifest.json

Needs the `cryptography` package. Exits non-zero on any malformed, tampered or
truncated input; only authenticated plaintext is ever written. With
--verify-manifest it checks a manifest's MAC and exits non-zero unless it
verifies.
"""
import base64
import hmac as std_hmac
import json
import sys

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"STRATAE1"
TAG = 16


def file_key(master, salt):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"strata/v1/payload").derive(master)


def nonce(counter, last):
    if counter >= 1 << 88:
        raise ValueError("chunk counter overflow")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def encrypt(master, key_id, salt, chunk_size, plain):
    """Encrypts with a given salt (known-answer tests only)."""
    kid = key_id.encode()
    header = MAGIC + b"\x01" + chunk_size.to_bytes(4, "big") + bytes([len(kid)]) + kid + salt
    aead = AESGCM(file_key(master, salt))
    chunks = [plain[i:i + chunk_size] for i in range(0, len(plain), chunk_size)] or [b""]
    out = [header]
    for i, chunk in enumerate(chunks):
        out.append(aead.encrypt(nonce(i, i == len(chunks) - 1), chunk, header))
    return b"".join(out)


def decrypt(master, data_in, data_out):
    head = data_in.read(14)
    if len(head) < 14 or head[:8] != MAGIC:
        raise ValueError("bad magic or truncated header")
    if head[8] != 1:
        raise ValueError("unsupported algorithm %d" % head[8])
    chunk_size = int.from_bytes(head[9:13], "big")
    rest = data_in.read(head[13] + 32)
    if len(rest) < head[13] + 32:
        raise ValueError("truncated header")
    header = head + rest
    aead = AESGCM(file_key(master, header[-32:]))
    sealed = chunk_size + TAG
    counter = 0
    buf = data_in.read(sealed)
    while True:
        nxt = data_in.read(sealed)
        last = len(nxt) == 0
        if len(buf) < TAG:
            raise ValueError("truncated before the final chunk")
        try:
            data_out.write(aead.decrypt(nonce(counter, last), buf, header))
        except Exception:
            raise ValueError("chunk %d does not authenticate (wrong key, corrupted, truncated or tampered)" % counter)
        if last:
            return
        counter += 1
        buf = nxt


def manifest_mac(master, document):
    """The MAC of a manifest (a parsed JSON object without its "mac" member)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"strata/v1/manifest").derive(master)
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(canonical)
    return h.finalize().hex()


def verify_manifest(master, path):
    with open(path, "rb") as f:
        document = json.loads(f.read())
    mac = document.pop("mac", None)
    if mac is None:
        raise ValueError("no MAC: the manifest is not authenticated")
    if mac.get("algorithm") != "HMAC-SHA256":
        raise ValueError("unknown MAC algorithm %r" % mac.get("algorithm"))
    if not std_hmac.compare_digest(manifest_mac(master, document), mac.get("value", "")):
        raise ValueError("FORGED: the MAC does not verify with this key")
    return mac["key_id"]


def load_key(path):
    with open(path, "rb") as f:
        master = base64.b64decode(f.read().strip())
    if len(master) != 32:
        sys.exit("key file does not hold 32 base64-encoded bytes")
    return master


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--verify-manifest":
        try:
            key_id = verify_manifest(load_key(sys.argv[2]), sys.argv[3])
        except ValueError as e:
            sys.exit("strata_decrypt: %s" % e)
        print("ok: authenticated (key %s)" % key_id)
        return
    if len(sys.argv) != 2:
        sys.exit("usage: strata_decrypt.py KEY_FILE < in > out\n       strata_decrypt.py --verify-manifest KEY_FILE MANIFEST")
    master = load_key(sys.argv[1])
    try:
        decrypt(master, sys.stdin.buffer, sys.stdout.buffer)
    except ValueError as e:
        sys.exit("strata_decrypt: %s" % e)


if __name__ == "__main__":
    main()
