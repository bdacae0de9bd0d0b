"""Independent reimplementation of format v1 (design.md "Keys and pseudonyms"), for known-answer tests.

Written from the design text only: hmac/hashlib, plus RFC 5869 HKDF by hand and cryptography's HKDF.
It deliberately imports nothing from ``contract_extracts``.
"""

from __future__ import annotations

import hashlib
import hmac
from fractions import Fraction

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# A fixed master key for vectors: bytes 0x00..0x1f.
MASTER = bytes(range(32))


def expected_key_id(master: bytes) -> str:
    return hmac.new(master, b"key-id", hashlib.sha256).hexdigest()[:16]


def info_for(purpose: str, contract_id: str, delivery_id: str | None = None) -> bytes:
    info = f"contract-extracts/v1/{purpose}/{contract_id}"
    if delivery_id is not None:
        info += f"/{delivery_id}"
    return info.encode("utf-8")


def hkdf_rfc5869(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 with salt=None (a HashLen string of zeros), written out from RFC 5869."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def hkdf_cryptography(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


def expected_contract_key(master: bytes, purpose: str, contract_id: str, delivery_id: str | None = None) -> bytes:
    info = info_for(purpose, contract_id, delivery_id)
    key = hkdf_rfc5869(master, info)
    assert key == hkdf_cryptography(master, info)
    return key


def expected_pseudonym(key: bytes, entity: str, canonical: str) -> str:
    return hmac.new(key, (entity + "\x00" + canonical).encode(), "sha256").hexdigest()[:32]


def entity_input(entity: str, canonical: str) -> bytes:
    """design.md: input = utf8(e + "\x00" + canonical(v))."""
    return (entity + "\x00" + canonical).encode("utf-8")


def expected_rank(sample_key: bytes, entity: str, canonical: str) -> int:
    """design.md "Sampling": first 8 bytes of HMAC-SHA256(sample_key, input), big-endian unsigned."""
    return int.from_bytes(hmac.new(sample_key, entity_input(entity, canonical), hashlib.sha256).digest()[:8], "big")


def expected_offset(dateshift_key: bytes, entity: str, canonical: str, max_days: int) -> int:
    """design.md "Date shifting": u = first 4 bytes big-endian; r = u mod 2m; r-m if r < m else r-m+1."""
    u = int.from_bytes(hmac.new(dateshift_key, entity_input(entity, canonical), hashlib.sha256).digest()[:4], "big")
    r = u % (2 * max_days)
    return r - max_days if r < max_days else r - max_days + 1


def expected_sample(sample_key: bytes, entity: str, canonicals, fraction: float | None,
                    max_records: int | None) -> set[str]:
    """design.md: keep rank < fraction × 2^64 (exact), then the max_records smallest ranks (bottom-k)."""
    ranked = sorted((expected_rank(sample_key, entity, c), c) for c in set(canonicals))
    if fraction is not None:
        ranked = [(r, c) for r, c in ranked if Fraction(r) < Fraction(fraction) * 2**64]
    if max_records is not None:
        ranked = ranked[:max_records]
    return {c for _, c in ranked}
