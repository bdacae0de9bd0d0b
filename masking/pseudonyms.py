"""Keyed pseudonyms (format v1): hex(HMAC-SHA256(pseudonym_key, entity + "\\x00" + canonical))[:32].

The digests come from ``masking.hashing`` (OpenSSL HMAC over a pre-keyed template, optionally over
worker processes) as 32 lower-case hex characters each, written straight into an Arrow string array
(one ``bytes.hex()`` per batch, no Python string per value). The key never leaves this
process tree: hashing is never pushed into the source database, where it would appear in SQL text
and server logs.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from masking.hashing import LOCAL, HashPool, scatter_strings

PSEUDONYM_HEX_CHARS = 32
PSEUDONYM_BYTES = PSEUDONYM_HEX_CHARS // 2
_BLOCK = 64


class PrekeyedHmacSha256:
    """HMAC-SHA256 with the key schedule done once (RFC 2104 construction over hashlib).

    Kept as a small, dependency-free reference: the tests compare it with ``hmac.new`` and with the
    OpenSSL path of ``masking.hashing``.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def hexdigests(self, prefix: bytes, values: list[str | None], chars: int) -> list[str | None]:
        """Hex digests (truncated to ``chars``) of prefix + utf8(value); None stays None."""
        inner_base, outer_base = self._inner, self._outer
        out: list[str | None] = []
        append = out.append
        for value in values:
            if value is None:
                append(None)
                continue
            inner = inner_base.copy()
            inner.update(prefix + value.encode("utf-8"))
            outer = outer_base.copy()
            outer.update(inner.digest())
            append(outer.hexdigest()[:chars])
        return out


def entity_prefix(entity: str) -> bytes:
    return entity.encode("utf-8") + b"\x00"


def pseudonymise_array(values: pa.Array | pa.ChunkedArray, *, key: bytes, entity: str,
                       canonicaliser: str | None, pool: HashPool | None = None) -> pa.Array:
    """Pseudonyms for one batch of one column (memory bounded by the batch); nulls and blanks → null.

    ``canonicaliser`` None: the values are canonical already.
    """
    keyed = (pool or LOCAL).keyed(values, canonicaliser=canonicaliser, key=key, prefix=entity_prefix(entity),
                                  width=PSEUDONYM_BYTES, hexed=True)
    return scatter_strings(keyed.valid, keyed.data, PSEUDONYM_HEX_CHARS)
