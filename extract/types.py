"""SQLAlchemy column types → Arrow types. Anything unknown fails closed with a clear error."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from core.errors import SourceError


def arrow_type(column: sa.Column[Any], where: str) -> pa.DataType:
    t = column.type
    if isinstance(t, sa.Boolean):
        return pa.bool_()
    if isinstance(t, sa.Integer):
        return pa.int64()
    if isinstance(t, sa.Float) or (isinstance(t, sa.Numeric) and t.asdecimal is False):
        return pa.float64()
    if isinstance(t, sa.Numeric):
        precision = t.precision or 38
        scale = t.scale if t.scale is not None else (0 if t.precision else 9)
        if precision > 38:
            raise SourceError(f"{where}: NUMERIC({precision}) is wider than 38 digits; cast it in a view")
        return pa.decimal128(precision, scale)
    if isinstance(t, sa.DateTime):
        return pa.timestamp("us", tz="UTC" if getattr(t, "timezone", False) else None)
    if isinstance(t, sa.Date):
        return pa.date32()
    if isinstance(t, sa.Time):
        return pa.time64("us")
    if isinstance(t, sa.String | sa.Enum):
        return pa.string()
    if isinstance(t, sa.LargeBinary):
        return pa.binary()
    raise SourceError(f"{where}: source type {t!r} is not supported; leave the column out of the contract "
                      "or expose it through a view with a supported type")
