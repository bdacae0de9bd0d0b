"""Audit: the append-only, hash-chained ledger every stage reports to (design.md "Audit ledger").

``ledger`` (append, verify, query), ``opening`` (opening the configured ledger, keyed mode),
``checkpoint`` (signed heads kept elsewhere), ``export`` (JSON Lines / CSV, recorded as an access).
"""

from audit.ledger import (
    GENESIS,
    Anchor,
    Ledger,
    LedgerRecord,
    VerifyResult,
    canonical_json,
    chain_hash,
    record_body,
)

__all__ = ["GENESIS", "Anchor", "Ledger", "LedgerRecord", "VerifyResult", "canonical_json", "chain_hash",
           "record_body"]
