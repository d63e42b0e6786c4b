#!/usr/bin/env python3
"""Reference decryptor for strata's encryption format v1 (docs/format.md).

Independent of the Rust code: it exists to prove the format is specified well
enough to implement elsewhere, and the test suite runs it against real backups.

    python3 strata_decrypt.py KEY_FILE < backup.sql.gz.enc | gunzip | psql

Needs the `cryptography` package. Exits non-zero on any malformed, tampered or
truncated input; only authenticated plaintext is ever written.
"""
import base64
import sys

from cryptography.hazmat.primitives import hashes
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


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: strata_decrypt.py KEY_FILE < in > out")
    with open(sys.argv[1], "rb") as f:
        master = base64.b64decode(f.read().strip())
    if len(master) != 32:
        sys.exit("key file does not hold 32 base64-encoded bytes")
    try:
        decrypt(master, sys.stdin.buffer, sys.stdout.buffer)
    except ValueError as e:
        sys.exit("strata_decrypt: %s" % e)


if __name__ == "__main__":
    main()
