"""Audit: the append-only, hash-chained ledger every stage reports to (design.md "Audit ledger")."""

from contract_extracts.audit.ledger import (
    GENESIS,
    Ledger,
    LedgerRecord,
    VerifyResult,
    canonical_json,
    chain_hash,
    record_body,
)

__all__ = ["GENESIS", "Ledger", "LedgerRecord", "VerifyResult", "canonical_json", "chain_hash", "record_body"]
