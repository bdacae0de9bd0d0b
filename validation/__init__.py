"""Validation stage: the Great Expectations gate a staged file must pass before it is packaged.

Importing this package is cheap: Great Expectations is only imported when a suite is built or a
file is validated.
"""

from validation.gate import (
    PSEUDONYM_REGEX,
    ColumnRule,
    DatasetRules,
    ExpectationOutcome,
    ValidationSummary,
    build_suite,
    validate_parquet,
)

__all__ = [
    "PSEUDONYM_REGEX",
    "ColumnRule",
    "DatasetRules",
    "ExpectationOutcome",
    "ValidationSummary",
    "build_suite",
    "validate_parquet",
]
