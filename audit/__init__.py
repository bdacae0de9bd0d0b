"""Audit: the append-only, hash-chained ledger every stage reports to (design.md "Audit ledger").

``ledger`` (append, verify, query), ``keys`` (keyed mode, opening the configured ledger),
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
