"""Validation stage: the Great Expectations gate a staged file must pass before it is packaged.

Importing this package does not import Great Expectations (seconds): that happens when a suite is
built, a file is validated or a report is rendered (``gx_adapter.import_gx``).
"""

from validation.model import (
    PSEUDONYM_REGEX,
    ColumnRule,
    DatasetRules,
    ExpectationOutcome,
    ValidationSummary,
)
from validation.staged_file import build_suite, validate_parquet

__all__ = [
    "PSEUDONYM_REGEX",
    "ColumnRule",
    "DatasetRules",
    "ExpectationOutcome",
    "ValidationSummary",
    "build_suite",
    "validate_parquet",
]
