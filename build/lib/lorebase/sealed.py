"""Sealed bytes: encrypted and authenticated with a secret, for what lorebase keeps where
others can read or write it: the backups in S3 (tasks/backup.py, with BACKUP_KEY) and the
queued mail in Redis (mail.py, with a key derived from COOKIE_SECRET).

A sealed stream is a header, MAGIC and a random 16-byte salt, then chunks of CHUNK bytes of
plaintext (the last one shorter, possibly empty), each encrypted with AES-256-GCM:

  key    HKDF-SHA256(secret, salt, info=purpose): one key per sealed object, so the chunk
         counter below can serve as the nonce without ever repeating under one key
  nonce  the chunk's index (8 bytes, big-endian), 1 on the last chunk else 0 (1 byte), 3 zeros
  AAD    the header, then `bound`: what the object claims to be (a backup's kind and name)

So another secret, a changed byte, a chunk dropped, repeated or moved, a stream cut short at a
chunk boundary (no chunk marked last), bytes after the last chunk, or the object presented
under another name (another `bound`) all fail with Unsealed before any plaintext is trusted:
`open_stream` writes plaintext as it goes, so a caller uses its output only once it returned.
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"LORESEAL1\n"
SALT = 16
TAG = 16
CHUNK = 1 << 20
HEADER = len(MAGIC) + SALT


class Unsealed(Exception):
    """The bytes are not sealed with this secret for this purpose and this `bound`, or were
    changed, cut or reordered since."""


def derive(secret: str | bytes, salt: bytes, purpose: bytes) -> AESGCM:
    raw = secret.encode() if isinstance(secret, str) else secret
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=purpose).derive(raw)
    return AESGCM(key)


def _nonce(index: int, last: bool) -> bytes:
    return struct.pack(">QB3x", index, 1 if last else 0)


def _read(src: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes: fewer only at the end of the stream."""
    parts: list[bytes] = []
    while size > 0:
        part = src.read(size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def seal_stream(secret: str | bytes, purpose: bytes, bound: bytes, src: BinaryIO, dst: BinaryIO,
                chunk: int = CHUNK) -> None:
    header = MAGIC + os.urandom(SALT)
    aead = derive(secret, header[len(MAGIC):], purpose)
    aad = header + bound
    dst.write(header)
    index, current = 0, _read(src, chunk)
    while True:
        following = _read(src, chunk) if len(current) == chunk else b""  # read ahead: is this the last?
        last = not following
        dst.write(aead.encrypt(_nonce(index, last), current, aad))
        if last:
            return
        index, current = index + 1, following


def open_stream(secret: str | bytes, purpose: bytes, bound: bytes, src: BinaryIO, dst: BinaryIO,
                chunk: int = CHUNK) -> None:
    """Writes the plaintext of `src` to `dst`; raises Unsealed (the output is then garbage)."""
    header = _read(src, HEADER)
    if len(header) != HEADER or not header.startswith(MAGIC):
        raise Unsealed("not a sealed object")
    aead = derive(secret, header[len(MAGIC):], purpose)
    aad = header + bound
    index, current = 0, _read(src, chunk + TAG)
    while True:
        following = _read(src, chunk + TAG) if len(current) == chunk + TAG else b""
        last = not following
        try:
            dst.write(aead.decrypt(_nonce(index, last), current, aad))
        except InvalidTag:
            raise Unsealed(f"chunk {index} does not verify") from None
        if last:
            return
        index, current = index + 1, following


def seal(secret: str | bytes, purpose: bytes, bound: bytes, data: bytes) -> bytes:
    out = io.BytesIO()
    seal_stream(secret, purpose, bound, io.BytesIO(data), out)
    return out.getvalue()


def unseal(secret: str | bytes, purpose: bytes, bound: bytes, data: bytes) -> bytes:
    out = io.BytesIO()
    open_stream(secret, purpose, bound, io.BytesIO(data), out)
    return out.getvalue()
