"""The metrics of the gate's column expectations, computed with pyarrow.compute on Arrow batches (no pandas).

Great Expectations stays the decision function (``staged_file`` feeds these counts to each expectation's
own decision, ``gx_adapter.decide``); this module only counts, per Arrow batch, what GX's pandas metric
would count on the same rows:

* **nulls** as GX sees them: pandas ``isnull`` after ``to_pandas``, i.e. Arrow nulls, plus NaN in
  floating columns and the NaT sentinel (int64 minimum) in timestamp/duration columns. Map
  expectations ignore those rows; ``expect_column_values_to_not_be_null`` counts them.
* **unexpected** non-null values, with GX's semantics reproduced exactly:

  - ``match_regex``: pandas ``str.contains`` is Python ``re.search``, where ``$`` also matches before a
    final newline and ``\\Z`` is the end of the string. The regex is parsed with Python's own parser and
    re-emitted as RE2 only when every construct has identical meaning (literals, classes of literals and
    ranges, ``.``, groups, alternation, bounded repeats, ``^``/``\\A``, ``\\Z`` → ``\\z``, and a *final*
    ``$`` → ``\\n?\\z``); anything else (``\\d``, ``\\w``, ``\\s``, ``\\b``, look-arounds, flags, ...) is
    not vectorised.
  - ``value_length.equals``: characters (code points), as ``str.len``.
  - ``between``: float bounds (GX stores them as floats). Integer and floating columns are compared in
    float64 exactly as numpy compares an int64 column with a float (and as GX's pandas frame does for an
    int64 column holding nulls, which pandas turns into float64); decimal columns exactly, as Python
    compares ``Decimal`` with ``float``.
  - ``in_set``: string columns against the *string* members of the set (pandas' Arrow-backed ``isin``).
  - ``multiple_of`` (``expectations`` shares ``is_multiple`` with this module): integers exactly; decimals
    exactly (``pc.remainder``); floats through the shortest decimal repr (``Decimal(str(v))``),
    vectorised where that repr provably has at most the base's decimal places. Value by value with
    ``is_multiple`` itself where GX's ``Decimal`` arithmetic could raise or round (huge values,
    infinities, a fractional base on huge integers), so its errors (a quotient beyond the context's 28
    digits) surface as GX's would, in the decimal context of the thread that built the metric.
  - ``not_source_identifier`` (the leak check): ``leakage.IdentifierSample.leaked`` on the Arrow strings
    (GX's wrapper renders values with ``astype(str)`` first, identical for strings). For any other type
    a value counts as leaked when either rendering leaks, pandas' ``astype(str)`` (``1.0`` for an int64
    in a batch with nulls, ``1e-07``) or Arrow's cast to string (``1``, ``1e-7``): at least as much as GX
    finds.

A (kind, Arrow type, kwargs) this module cannot reproduce exactly has no vectorised metric
(``column_metric`` returns None) and ``staged_file`` runs real GX on pandas batches for it instead.

Known difference, by design: GX sees an int64 column with a null in the batch as float64, so beyond
2**53 its ``multiple_of`` works on a rounded value; the vectorised metric uses the exact integer (and
``staged_file``'s cross-check fails such an expectation closed if it meets this in the head slice).

Values never leave this module: functions return counts only, and errors are raised as they come
(``staged_file`` keeps only the exception type).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal, InvalidOperation, getcontext, localcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.errors import ContractExtractsError
from validation import leakage
from validation.model import (
    MULTIPLES_OF,
    NOT_SOURCE_IDENTIFIER,
    VALUE_LENGTHS_EQUAL,
    VALUES_BETWEEN,
    VALUES_IN_SET,
    VALUES_MATCH_REGEX,
    VALUES_NOT_NULL,
)

# Python's own regex parser (private modules of ``re``): typeshed describes them under their deprecated
# public aliases, which are the same modules but warn when imported.
if TYPE_CHECKING:
    import sre_constants as sre
    import sre_parse
else:
    from re import _constants as sre
    from re import _parser as sre_parse

_INT64_MIN = -(2**63)
_SAFE_FLOAT = 2.0**50  # |v·10^k| below this: float → integer rounding is exact (see _float_multiples)


@dataclass
class Counts:
    """One expectation's metric over some rows: GX-null rows and unexpected non-null rows."""

    nulls: int = 0
    unexpected: int = 0

    def add(self, other: Counts) -> None:
        self.nulls += other.nulls
        self.unexpected += other.unexpected


Metric = Callable[[pa.Array], Counts]


# ------------------------------------------------------------------------------------------ types


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _is_int(t: pa.DataType) -> bool:
    # uint64 is left to GX: pandas compares it with Python ints (exactly), numpy with floats.
    return bool(pa.types.is_integer(t) and not pa.types.is_uint64(t))


def _is_float(t: pa.DataType) -> bool:
    return bool(pa.types.is_float32(t) or pa.types.is_float64(t))


def _is_decimal(t: pa.DataType) -> bool:
    return bool(pa.types.is_decimal128(t) and t.scale >= 0)  # pyarrow compares no negative-scale decimal


def _nullable_plainly(t: pa.DataType) -> bool:
    """Types whose pandas nulls are exactly the Arrow nulls (plus NaN / NaT, handled in ``null_mask``)."""
    return (pa.types.is_null(t) or pa.types.is_boolean(t) or pa.types.is_integer(t) or _is_float(t)
            or pa.types.is_decimal(t) or _is_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t) or pa.types.is_date(t) or pa.types.is_time(t)
            or pa.types.is_timestamp(t) or pa.types.is_duration(t))


def null_mask(values: pa.Array) -> pa.Array:
    """True where GX (pandas ``isnull`` after ``to_pandas``) sees a null; never null itself."""
    t = values.type
    if _is_float(t):
        return pc.is_null(values, nan_is_null=True)
    mask = pc.is_null(values)
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):  # int64 minimum is pandas' NaT
        mask = pc.or_(mask, pc.fill_null(pc.equal(values.view(pa.int64()), _INT64_MIN), False))
    return mask


def _count(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _counts(values: pa.Array, nulls: pa.Array, ok: pa.Array) -> Counts:
    """Counts from a GX null mask and a per-row "meets the expectation" array (ignored where null)."""
    bad = pc.invert(pc.fill_null(ok, True))
    null_count = _count(nulls)
    if null_count:  # NaN / NaT rows are valid in Arrow but ignored by GX
        bad = pc.and_(bad, pc.invert(nulls))
    return Counts(nulls=null_count, unexpected=_count(bad))


def _strings(values: pa.Array) -> pa.Array:
    return values.cast(pa.large_string()) if pa.types.is_string_view(values.type) else values


# ------------------------------------------------------------------------------------------ regex


class _Untranslatable(Exception):
    pass


def _char(code: int) -> str:
    return chr(code) if chr(code).isascii() and chr(code).isalnum() else f"\\x{{{code:x}}}"


def _set(items: list[tuple[Any, Any]]) -> str:
    out = []
    negate = False
    for op, av in items:
        if op == sre.NEGATE:
            negate = True
        elif op == sre.LITERAL:
            out.append(_char(av))
        elif op == sre.RANGE:
            out.append(f"{_char(av[0])}-{_char(av[1])}")
        else:  # categories (\d \w \s: Unicode in Python, ASCII in RE2) and case-folded ranges
            raise _Untranslatable
    return "[" + ("^" if negate else "") + "".join(out) + "]"


def _emit(items: Any, final: bool) -> str:
    return "".join(_emit_one(op, av, final and i == len(items) - 1) for i, (op, av) in enumerate(items))


def _emit_one(op: Any, av: Any, final: bool) -> str:
    if op == sre.LITERAL:
        return _char(av)
    if op == sre.NOT_LITERAL:
        return f"[^{_char(av)}]"
    if op == sre.ANY:  # without DOTALL both exclude only "\n"
        return "."
    if op == sre.IN:
        return _set(av)
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, high, body = av
        if low > 1000 or (high != sre.MAXREPEAT and high > 1000):  # RE2's repeat limit
            raise _Untranslatable
        count = f"{{{low},}}" if high == sre.MAXREPEAT else f"{{{low},{high}}}"
        return f"(?:{_emit(body, False)}){count}" + ("?" if op == sre.MIN_REPEAT else "")
    if op == sre.SUBPATTERN:
        _group, add_flags, del_flags, body = av
        if add_flags or del_flags:
            raise _Untranslatable
        return f"(?:{_emit(body, final)})"
    if op == sre.BRANCH:
        return "(?:" + "|".join(_emit(branch, final) for branch in av[1]) + ")"
    if op == sre.AT:
        if av in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
            return r"\A"
        if av == sre.AT_END_STRING:
            return r"\z"
        if av == sre.AT_END and final:
            # Python's "$": at the end or before a final "\n". Consuming that "\n" is harmless only
            # when nothing follows in the pattern, hence "final".
            return r"(?:\n?\z)"
    raise _Untranslatable


def python_regex_to_re2(pattern: str) -> str | None:
    """An RE2 pattern that ``pc.match_substring_regex`` evaluates exactly like ``re.search(pattern, s)``.

    None when the pattern uses anything whose meaning differs between the two engines (or RE2 refuses it).
    """
    if not isinstance(pattern, str):
        return None
    try:
        parsed = sre_parse.parse(pattern, 0)
        if parsed.state.flags & ~sre.SRE_FLAG_UNICODE:
            return None
        translated = _emit(parsed.data, True)
    except (_Untranslatable, re.error, RecursionError):
        return None
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern=translated)
    except (pa.ArrowException, ValueError):
        return None
    return translated


# ------------------------------------------------------------------------------------ expectations


def _regex(pattern: Any) -> Metric | None:
    translated = python_regex_to_re2(pattern)
    if translated is None:
        return None

    def metric(values: pa.Array) -> Counts:
        return _counts(values, null_mask(values),
                       pc.match_substring_regex(_strings(values), pattern=translated))
    return metric


def _length(value: Any) -> Metric | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None

    def metric(values: pa.Array) -> Counts:
        return _counts(values, null_mask(values), pc.equal(pc.utf8_length(_strings(values)), value))
    return metric


def _in_set(value_set: Any) -> Metric | None:
    if value_set is None:
        return lambda values: Counts(nulls=_count(null_mask(values)), unexpected=0)  # vacuously true in GX
    if not isinstance(value_set, list | tuple | set | frozenset):
        return None
    # pandas' Arrow-backed string isin keeps only the string members of the set.
    strings = pa.array([v for v in value_set if isinstance(v, str)], pa.large_string())

    def metric(values: pa.Array) -> Counts:
        nulls = null_mask(values)
        if len(strings) == 0:
            return Counts(nulls=_count(nulls), unexpected=len(values) - _count(nulls))
        return _counts(values, nulls, pc.is_in(_strings(values), value_set=strings.cast(_strings(values).type)))
    return metric


def _bound(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isfinite(value))


def _decimal_threshold(bound: float, t: pa.DataType, rounding: str) -> pa.Scalar | int:
    """``bound`` moved onto the decimal grid of ``t`` (exactly), or -1/+1 when it lies beyond the type's range."""
    with localcontext() as ctx:
        ctx.prec = 1000  # a float has at most ~770 significant decimal digits
        step = Decimal(1).scaleb(-t.scale)
        grid = Decimal(bound).quantize(step, rounding=rounding)
    limit = Decimal(10) ** (t.precision - t.scale)
    if grid >= limit:
        return 1
    if grid <= -limit:
        return -1
    return pa.scalar(grid, pa.decimal128(t.precision, t.scale))


def _compare(values: pa.Array, bound: float, op: str) -> pa.Array:
    """values ``op`` bound (op: ge, gt, le, lt), exactly as GX's pandas compare does for this type."""
    t = values.type
    functions = {"ge": pc.greater_equal, "gt": pc.greater, "le": pc.less_equal, "lt": pc.less}
    if _is_decimal(t):
        # Python compares Decimal with float exactly: compare with the bound rounded onto the column's
        # grid (v ≥ b ⟺ v ≥ ceil(b); v ≤ b ⟺ v ≤ floor(b); strict likewise).
        rounding = ROUND_CEILING if op in ("ge", "lt") else ROUND_FLOOR
        grid = _decimal_threshold(bound, t, rounding)
        if isinstance(grid, int):  # beyond the type's range: the same answer for every value
            constant = (grid > 0) == (op in ("le", "lt"))
            return pa.array(np.full(len(values), constant))
        return functions[op](values, grid)
    # numpy compares an int64 column with a float in float64 (pandas does so too when nulls made the
    # column float64); narrower ints and float32 convert to float64 exactly.
    as_float = values if pa.types.is_float64(t) else pc.cast(values, pa.float64(), safe=False)
    return functions[op](as_float, bound)


def _between(kwargs: dict[str, Any], t: pa.DataType) -> Metric | None:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    strict_min, strict_max = bool(kwargs.get("strict_min")), bool(kwargs.get("strict_max"))
    if not (_is_int(t) or _is_float(t) or _is_decimal(t)) or not (_bound(low) and _bound(high)):
        return None
    if (low is None and high is None) or (low is not None and high is not None and low > high):
        return None  # GX raises on these: leave it to GX, which marks the expectation as errored

    def metric(values: pa.Array) -> Counts:
        ok = None
        if low is not None:
            ok = _compare(values, low, "gt" if strict_min else "ge")
        if high is not None:
            upper = _compare(values, high, "lt" if strict_max else "le")
            ok = upper if ok is None else pc.and_(ok, upper)
        return _counts(values, null_mask(values), ok)
    return metric


def _not_null(values: pa.Array) -> Counts:
    nulls = _count(null_mask(values))
    return Counts(nulls=nulls, unexpected=nulls)


# ---------------------------------------------------------------------------------------- multiples


def is_multiple(value: Any, base: Decimal) -> bool:
    """GX's decision for one value of ``expect_column_values_to_be_multiples_of`` (``Decimal(str(v)) % base``).

    Raises ``decimal.InvalidOperation`` when the quotient needs more than 28 digits, as GX would.
    """
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return False
    if not number.is_finite():
        return False
    return number % base == 0


def _base_fraction(base: Any) -> tuple[Decimal, int, int] | None:
    """(Decimal(str(base)), m, k) with Decimal(str(base)) = m / 10**k, m and k whole; None if unusable."""
    if isinstance(base, bool) or not isinstance(base, int | float) or not math.isfinite(base) or base <= 0:
        return None
    step = Decimal(str(base))
    sign, digits, exponent = step.as_tuple()
    if sign or not isinstance(exponent, int):
        return None
    mantissa = int("".join(map(str, digits)) or "0")
    if exponent >= 0:
        return step, mantissa * 10**exponent, 0
    scale = -exponent
    while scale and mantissa % 10 == 0:  # "5.0" → 5/10^0
        mantissa, scale = mantissa // 10, scale - 1
    return step, mantissa, scale


def _quotient_may_overflow(values: pa.Array, step: Decimal, context: Context) -> bool:
    largest = pc.max(pc.abs(pc.cast(values, pa.float64(), safe=False))).as_py()
    return largest is not None and largest / float(step) >= 10.0 ** (context.prec - 1)  # 10x margin


def _int_multiples(values: pa.Array, mantissa: int, scale: int, base: Any) -> pa.Array:
    if float(base).is_integer():
        # GX: np.asarray(column, dtype=np.int64) % int(base) == 0, which overflows beyond int64.
        if int(base) > 2**63 - 1:
            raise OverflowError("base beyond int64")
        divisor = int(base)
    else:
        # v is a multiple of m/10^k ⟺ (m / gcd(m, 10^k)) divides v (exact, as Decimal(str(v)) % base).
        divisor = mantissa // math.gcd(mantissa, 10**scale)
    if divisor > 2**63 - 1:
        return pc.equal(values, 0)
    return pc.equal(pc.remainder(pc.cast(values, pa.int64()), divisor), 0)


def _decimal_multiples(values: pa.Array, step: Decimal, context: Context) -> pa.Array:
    t = values.type
    # A quotient of 28 digits or more makes Decimal's % raise in GX: do it value by value then.
    if t.precision - t.scale - step.adjusted() >= context.prec - 1:
        return _exact_multiples(values, step, context)
    try:
        remainder = pc.remainder(values, pa.scalar(step))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # the common scale overflows: exact path
        return _exact_multiples(values, step, context)
    return pc.equal(remainder, pa.scalar(Decimal(0), remainder.type))


def _float_multiples(values: pa.Array, step: Decimal, mantissa: int, scale: int, context: Context) -> pa.Array:
    """GX tests Decimal(str(v)) % (m/10^k) == 0 with str(v) the shortest repr of the float.

    Where |v·10^k| < 2**50, w = round(v·10^k) is that repr scaled by 10^k whenever the repr has at most
    k decimals (then w / 10^k == v in float arithmetic); if the check fails the repr has more decimals and
    is no multiple. Elsewhere (huge values, infinities) ``is_multiple`` decides value by value.
    """
    if scale > 15 or mantissa >= 2**53:
        return _exact_multiples(values, step, context)
    as_float = values if pa.types.is_float64(values.type) else pc.cast(values, pa.float64())
    power = float(10**scale)
    scaled = pc.multiply(as_float, power)
    safe = pc.fill_null(pc.less(pc.abs(scaled), _SAFE_FLOAT), False)  # NaN, inf and huge: not safe
    whole = pc.round(scaled)
    ok = pc.and_(pc.equal(pc.divide(whole, power), as_float), pc.equal(pc.remainder(whole, float(mantissa)), 0))
    unsafe = pc.and_(pc.invert(safe), pc.invert(null_mask(values)))
    if _count(unsafe):
        ok = pc.if_else(safe, ok, _exact_multiples(values, step, context, only=unsafe))
    return ok


def _exact_multiples(values: pa.Array, step: Decimal, context: Context, only: pa.Array | None = None) -> pa.Array:
    """``is_multiple`` value by value on the rows of ``only`` (all non-null rows by default); True elsewhere.

    ``context``: the decimal context GX would use (contexts are per thread; metrics may run in a worker).
    """
    rows = np.flatnonzero(np.asarray((pc.is_valid(values) if only is None else only)
                                     .to_numpy(zero_copy_only=False), dtype=bool))
    out = np.ones(len(values), dtype=bool)
    with localcontext(context):
        out[rows] = [is_multiple(v, step) for v in values.take(pa.array(rows, pa.int64())).to_pylist()]
    return pa.array(out)


def _multiple_of(base: Any, t: pa.DataType) -> Metric | None:
    parsed = _base_fraction(base)
    if parsed is None:
        return None
    step, mantissa, scale = parsed
    context = getcontext().copy()  # the caller's (GX's) thread's decimal context
    if _is_int(t):
        def condition(values: pa.Array) -> pa.Array:
            # GX takes ints through Decimal when the base is fractional: a quotient beyond the context's
            # precision raises there, so do those batches value by value (raising likewise).
            if not float(base).is_integer() and _quotient_may_overflow(values, step, context):
                return _exact_multiples(values, step, context)
            return _int_multiples(values, mantissa, scale, base)
    elif _is_float(t):
        def condition(values: pa.Array) -> pa.Array:
            if context.prec < 17:  # the fast path relies on quotients below 2**50 fitting the context
                return _exact_multiples(values, step, context)
            return _float_multiples(values, step, mantissa, scale, context)
    elif _is_decimal(t):
        def condition(values: pa.Array) -> pa.Array:
            return _decimal_multiples(values, step, context)
    else:
        return None

    def metric(values: pa.Array) -> Counts:
        return _counts(values, null_mask(values), condition(values))
    return metric


# ------------------------------------------------------------------------------------------- leaks


def _renders_plainly(t: pa.DataType) -> bool:
    """Types whose values pyarrow and pandas render as digits, signs, '.', ':', 'E', 'Z' or a few words only."""
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
                or pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_time(t)
                or pa.types.is_boolean(t))


def _leaks(token: Any, substring: Any, t: pa.DataType) -> Metric | None:
    if not isinstance(token, str):
        return None
    try:
        sample = leakage.lookup(token)
    except ContractExtractsError:  # not registered here: GX's own metric raises, the expectation errors
        return None
    substring = bool(substring)

    # A number, date, time or boolean renders as text no identifier of the sample could equal: nothing to search.
    rendered_only = _renders_plainly(t) and not sample.could_be_rendered

    def metric(values: pa.Array) -> Counts:
        nulls = null_mask(values)
        if rendered_only:
            return Counts(nulls=_count(nulls), unexpected=0)
        if _is_string(t):  # GX renders str with astype(str): the same strings
            hit = sample.leaked(_strings(values), substring=substring)
        else:
            hit = _leaks_in_either_rendering(values, nulls, sample, substring)
        hit &= ~np.asarray(nulls.to_numpy(zero_copy_only=False), dtype=bool)
        return Counts(nulls=_count(nulls), unexpected=int(np.count_nonzero(hit)))
    return metric


def _leaks_in_either_rendering(values: pa.Array, nulls: pa.Array, sample: leakage.IdentifierSample,
                               substring: bool) -> np.ndarray:
    hit = sample.leaked(pc.cast(values, pa.string()), substring=substring)
    series = values.to_pandas()
    keep = np.flatnonzero(~np.asarray(nulls.to_numpy(zero_copy_only=False), dtype=bool))
    if len(keep):
        hit[keep] |= sample.leaked(series.iloc[keep].astype(str).tolist(), substring=substring)
    return hit


# -------------------------------------------------------------------------------------------- entry

_KNOWN_KWARGS = {
    VALUES_MATCH_REGEX: {"regex"},
    VALUE_LENGTHS_EQUAL: {"value"},
    VALUES_NOT_NULL: set(),
    VALUES_BETWEEN: {"min_value", "max_value", "strict_min", "strict_max"},
    VALUES_IN_SET: {"value_set"},
    MULTIPLES_OF: {"base"},
    NOT_SOURCE_IDENTIFIER: {"identifier_set", "substring"},
}
_STRING_ONLY = {VALUES_MATCH_REGEX, VALUE_LENGTHS_EQUAL, VALUES_IN_SET}


def column_metric(kind: str, kwargs: dict[str, Any], t: pa.DataType) -> Metric | None:
    """The vectorised metric of one column expectation on a column of Arrow type ``t``, or None.

    ``kwargs`` are the expectation's configuration kwargs (what GX passes to its metric). None means
    the result could differ from GX's for this combination: ``staged_file`` then runs GX itself on batches.
    """
    allowed = _KNOWN_KWARGS.get(kind)
    # "mostly" only changes the decision, which GX's _validate makes; anything else set (row_condition,
    # options added by a GX upgrade, unknown expectations) is left to GX itself.
    extra = {k for k, v in kwargs.items() if k not in {"column", "mostly"} and v is not None and v is not False}
    if allowed is None or not extra <= allowed:
        return None
    if not _nullable_plainly(t) or (kind in _STRING_ONLY and not _is_string(t)):
        return None
    if kind == VALUES_NOT_NULL:
        return _not_null
    if kind == VALUES_MATCH_REGEX:
        return _regex(kwargs.get("regex"))
    if kind == VALUE_LENGTHS_EQUAL:
        return _length(kwargs.get("value"))
    if kind == VALUES_IN_SET:
        return _in_set(kwargs.get("value_set"))
    if kind == VALUES_BETWEEN:
        return _between(kwargs, t)
    if kind == MULTIPLES_OF:
        return _multiple_of(kwargs.get("base"), t)
    return _leaks(kwargs.get("identifier_set"), kwargs.get("substring"), t)
