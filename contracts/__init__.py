"""Contracts: the strict model, loading with clear errors, content hashing for approvals."""

from contracts.loading import (
    content_hash,
    discover_contract_files,
    load_contract,
)
from contracts.model import Contract, Dataset, dag_id_for

__all__ = ["Contract", "Dataset", "content_hash", "dag_id_for", "discover_contract_files", "load_contract"]
