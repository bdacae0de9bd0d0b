"""Errors whose messages are safe to log: they name files, keys, columns and counts, never data values.

Anything raised by a third-party library may carry data values in its message, so the pipeline
turns foreign exceptions into ``StageFailed`` carrying only the exception's type name.
"""

from __future__ import annotations

from typing import Any


class ContractExtractsError(Exception):
    """Base class. The message must never contain a data value or a key."""


class ConfigError(ContractExtractsError):
    """Bad configuration or contract file: the message names the file, the key and the fix."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 fix: str | None = None) -> None:
        self.file = file
        self.key = key
        self.fix = fix
        self.detail = message
        parts = []
        if file:
            parts.append(str(file))
        if key:
            parts.append(key)
        text = ": ".join([*parts, message])
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)


class ContractError(ConfigError):
    """A contract file is invalid."""


def value_free(exc: BaseException) -> str:
    """What may be said of a foreign exception: its type name only.

    A third-party message (a driver, PyArrow, a parser) can quote the value that failed, so logs, the
    ledger and our own error messages name the type and never ``str(exc)``. The one place that rule lives.
    """
    return type(exc).__name__


class KeyMaterialError(ContractExtractsError):
    """A key (master, signing, identity) is missing, malformed or badly protected."""


class AuthorisationError(ContractExtractsError):
    """The contract may not run now (dates, assurance, approvals): nothing is extracted."""


class SourceError(ContractExtractsError):
    """The source does not match the contract (missing table or column, unsupported type)."""


class DataError(ContractExtractsError):
    """Source values cannot be treated as the contract says (counted, never shown)."""


class ValidationFailed(ContractExtractsError):
    """The staged output failed its expectations: nothing is packaged or delivered."""

    def __init__(self, message: str, failures: list[dict[str, Any]] | None = None) -> None:
        self.failures = failures or []
        super().__init__(message)


class DeliveryError(ContractExtractsError):
    """Packaging, encryption or transport failed: nothing is at the final destination."""


class VerificationError(ContractExtractsError):
    """A received package failed decryption, signature or checksum verification."""


class LedgerError(ContractExtractsError):
    """The audit ledger is unreachable or its chain is broken."""


class StageFailed(ContractExtractsError):
    """A stage failed on a foreign exception; only the exception type is kept (no values)."""
