"""Type information for the compiled ``masking._hmac_native`` (source: masking/_hmac_native.c)."""

from typing_extensions import Buffer

API_VERSION: int
OPENSSL_VERSION: str

def hmac_sha256_rows(key: Buffer, prefix: Buffer, *, offsets: Buffer, offset_bytes: int, data: Buffer,
                     validity: Buffer | None, first: int, count: int, valid_count: int, width: int,
                     hexed: bool) -> bytes: ...
