"""What the release gate checks and what it found: rule types and value-free outcome types.

Rules come from the contract (``rules``), never from the data. Outcomes hold no data values: the
expectation type, the column, success, counts, and "observed" facts that are not values (a row count,
the list of column *names*) or one of the fixed markers below. Importing this module is cheap: it
imports neither Great Expectations nor pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from core.errors import ConfigError, ValidationFailed

if TYPE_CHECKING:
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

PSEUDONYM_REGEX = r"^[0-9a-f]{32}$"
PSEUDONYM_LENGTH = 32

# GX expectation type names (``Expectation.expectation_type``), used in suites and summaries.
COLUMNS_MATCH_ORDERED_LIST = "expect_table_columns_to_match_ordered_list"
ROW_COUNT_BETWEEN = "expect_table_row_count_to_be_between"
VALUES_MATCH_REGEX = "expect_column_values_to_match_regex"
VALUE_LENGTHS_EQUAL = "expect_column_value_lengths_to_equal"
VALUES_NOT_NULL = "expect_column_values_to_not_be_null"
ROW_COUNT_EQUAL = "expect_table_row_count_to_equal"
VALUES_UNIQUE = "expect_column_values_to_be_unique"
VALUES_BETWEEN = "expect_column_values_to_be_between"
VALUES_IN_SET = "expect_column_values_to_be_in_set"
# Custom expectations (validation/expectations.py, which imports GX): GX derives these names from the classes.
ARROW_TYPES = "expect_table_arrow_types_to_equal"
NOT_SOURCE_IDENTIFIER = "expect_column_values_to_not_contain_source_identifiers"
MULTIPLES_OF = "expect_column_values_to_be_multiples_of"
EXIST_IN_DATASET = "expect_column_values_to_exist_in_dataset"
DISCLOSURE_THRESHOLD = "expect_disclosure_threshold_to_hold"
SAMPLE_MATCHES = "expect_sample_to_match_contract"
CELLS_NOT_RECOVERABLE = "expect_table_cells_not_recoverable"
WITHIN_POPULATION = "expect_column_values_to_be_in_population"
NO_PARQUET_STATISTICS = "expect_column_parquet_statistics_to_be_absent"
IDENTIFIERS_DRAWN = "expect_source_identifiers_to_be_drawn"

# Fixed, value-free markers for column expectations GX could not evaluate.
OBSERVED_COLUMN_MISSING = "not evaluated: column missing from file"
OBSERVED_COLUMN_DUPLICATED = "not evaluated: column name duplicated in file"
OBSERVED_EVALUATION_ERROR = "not evaluated: error inside Great Expectations"
OBSERVED_METRIC_ERROR = "not evaluated: error while computing the metric"
# Real GX on the head of the file counted differently from the vectorised metric (or GX's decision did
# not echo the metrics it was given): the expectation fails closed rather than trusting either.
OBSERVED_METRIC_DISAGREES = "not evaluated: vectorised metric disagrees with Great Expectations"

DELIVERY = "(delivery)"  # the dataset name of the summary of checks that belong to no single file


# --------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Domain:
    """Where a column's non-null values must lie (declared by the contract, never read from the data).

    ``between``: ``min_value`` ≤ v ≤ ``max_value``; ``in_set``: v in ``values`` (labels a
    treatment or hierarchy can produce); ``regex``: v matches ``regex`` (use ``\\Z``, not ``$``);
    ``multiple_of``: v is a whole multiple of ``base``.
    """

    kind: Literal["between", "in_set", "regex", "multiple_of"]
    min_value: float | None = None
    max_value: float | None = None
    values: tuple[Any, ...] = ()
    regex: str | None = None
    base: float | None = None

    def __post_init__(self) -> None:
        ok = {"between": self.min_value is not None or self.max_value is not None,
              "in_set": bool(self.values), "regex": bool(self.regex),
              "multiple_of": self.base is not None and self.base > 0}.get(self.kind, False)
        if not ok:
            raise ConfigError(f"domain {self.kind!r} is missing its bounds, values, regex or base",
                              key="columns.domains")


@dataclass(frozen=True)
class ColumnRule:
    """One expected column of the staged file."""

    name: str
    pseudonym: bool = False  # values must match PSEUDONYM_REGEX (nulls allowed unless not_null)
    not_null: bool = False  # no nulls allowed
    type: str | None = None  # the exact Arrow type (str(pa.DataType)); checked when any column names one
    unique: bool = False  # no value occurs twice in the whole file (nulls ignored)
    domains: tuple[Domain, ...] = ()
    leak: Literal["exact", "substring"] | None = None  # search for raw source identifiers

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("a column rule needs a non-empty column name", key="columns.name")
        kinds = [d.kind for d in self.domains]
        if len(set(kinds)) != len(kinds):
            raise ConfigError(f"column {self.name}: one domain of each kind at most", key="columns.domains")
        if self.pseudonym and "regex" in kinds:
            raise ConfigError(f"column {self.name}: a pseudonym column has its own format rule",
                              key="columns.domains")


@dataclass(frozen=True)
class DatasetRules:
    """What the staged file of one dataset must look like (derived from the contract)."""

    dataset: str
    columns: tuple[ColumnRule, ...]  # exact expected columns, in order
    min_rows: int = 0
    max_rows: int | None = None
    expected_rows: int | None = None  # exactly this many rows (the extract's count)

    def __post_init__(self) -> None:
        key = f"datasets.{self.dataset}"
        if not self.dataset:
            raise ConfigError("a dataset needs a name", key="datasets")
        if not self.columns:
            raise ConfigError("at least one column is required", key=f"{key}.columns")
        names = [c.name for c in self.columns]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(f"duplicated column names {duplicated}", key=f"{key}.columns",
                              fix="list each column once")
        if not isinstance(self.min_rows, int) or self.min_rows < 0:
            raise ConfigError("min_rows must be a whole number >= 0", key=f"{key}.min_rows")
        if self.max_rows is not None and (not isinstance(self.max_rows, int)
                                          or self.max_rows < self.min_rows):
            raise ConfigError("max_rows must be a whole number >= min_rows", key=f"{key}.max_rows")
        if self.expected_rows is not None and (not isinstance(self.expected_rows, int) or self.expected_rows < 0):
            raise ConfigError("expected_rows must be a whole number >= 0", key=f"{key}.expected_rows")

    @property
    def typed(self) -> bool:
        return any(c.type is not None for c in self.columns)


@dataclass(frozen=True)
class Reference:
    """Every non-null value of ``dataset.column`` must occur in ``parent_dataset.parent_column``."""

    dataset: str
    column: str
    parent_dataset: str
    parent_column: str


@dataclass(frozen=True)
class StatisticsCheck:
    """The Parquet file of ``dataset`` holds no statistics (min/max) of ``column`` (an identifier or free text)."""

    dataset: str
    column: str


@dataclass(frozen=True)
class LeakDraw:
    """The leak check must have drawn raw identifiers whenever the tables read have catalogued identifiers and
    the delivery has rows (a check that searched for nothing proves nothing)."""

    identifier_columns: int  # catalogued identifier columns of the tables read
    delivered_rows: int


@dataclass(frozen=True)
class DisclosureCheck:
    """The disclosure threshold, re-measured on the staged file of ``dataset``."""

    dataset: str
    key: tuple[str, ...]
    sensitive: tuple[str, ...]
    k: int
    l: int | None = None  # noqa: E741


@dataclass(frozen=True)
class TableCheck:
    """No suppressed cell of an aggregate table is recoverable from one line of it, nor pinned or proved small by
    it read together with the other tables of its dataset (``disclosure.tables.exposed_across_tables``)."""

    dataset: str  # the aggregate's name (its file is data/<name>.parquet)
    by: tuple[str, ...]
    read_with: tuple[str, ...] = ()  # the other tables of its dataset, unit and weight (their checks' names)
    base: int = 1  # the count base its counts are rounded to
    factor: float = 1.0  # grossing factor (inverse sampling fraction), 1 when not grossed
    threshold: int = 1
    additive: bool = True  # records, unweighted: its lines add up (distinct units and weights do not)


@dataclass(frozen=True)
class SampleCheck:
    """The contract's sample, and the population and sample sizes the extract recorded."""

    fraction: float | None
    max_records: int | None
    population: float | None
    size: float | None


@dataclass(frozen=True)
class DeliveryRules:
    """Every rule of the release gate for one delivery."""

    datasets: tuple[DatasetRules, ...]
    references: tuple[Reference, ...] = ()
    disclosure: tuple[DisclosureCheck, ...] = ()
    tables: tuple[TableCheck, ...] = ()
    sample: SampleCheck | None = None
    notes: tuple[str, ...] = ()  # value-free remarks (e.g. a reference not checked, and why)
    # Every row of a dataset restricted to the contract's population belongs to it: its entity pseudonyms
    # occur in the defining dataset (``Reference`` from the restricted dataset to the defining one).
    population: tuple[Reference, ...] = ()
    statistics: tuple[StatisticsCheck, ...] = ()
    leak_draw: LeakDraw | None = None


# ------------------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True)
class ExpectationOutcome:
    """The value-free outcome of one expectation over the whole file.

    ``observed`` holds only table-level facts that are not data values (the observed row count, the
    JSON list of observed column names) or a fixed marker saying why a column expectation could
    not be evaluated; ``unexpected_count`` is None when it is not a column expectation or when it
    could not be evaluated.
    """

    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    observed: str | None
    # The GX expectation configuration (value-free kwargs), for the operator's Data Docs report only.
    config: ExpectationConfiguration | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"expectation": self.expectation, "column": self.column, "success": self.success,
                "unexpected_count": self.unexpected_count, "observed": self.observed}


@dataclass(frozen=True)
class ValidationSummary:
    """Value-free result of the gate for one staged file."""

    dataset: str
    success: bool
    rows: int
    expectations: tuple[ExpectationOutcome, ...]

    def failures(self) -> list[ExpectationOutcome]:
        """The expectations that failed (empty when the gate passed)."""
        return [e for e in self.expectations if not e.success]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable and value-free: for the package manifest and the audit ledger."""
        return {
            "dataset": self.dataset,
            "success": self.success,
            "rows": self.rows,
            "evaluated": len(self.expectations),
            "failed": len(self.failures()),
            "expectations": [e.to_dict() for e in self.expectations],
        }

    def raise_if_failed(self) -> None:
        """Block delivery: raise ``ValidationFailed`` (value-free) unless every expectation passed."""
        if self.success:
            return
        failures = self.failures()
        named = ", ".join(f"{f.expectation}({f.column})" if f.column else f.expectation
                          for f in failures)
        raise ValidationFailed(
            f"dataset {self.dataset}: {len(failures)} of {len(self.expectations)} expectations "
            f"failed: {named}",
            failures=[f.to_dict() for f in failures],
        )


@dataclass
class DeliveryValidation:
    """Value-free result of the release gate for one delivery: one summary per file, plus the delivery's own."""

    summaries: list[ValidationSummary]
    delivery: ValidationSummary | None
    leak_check: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(s.success for s in self.summaries) and (self.delivery is None or self.delivery.success)

    def all_summaries(self) -> list[ValidationSummary]:
        return [*self.summaries, *([self.delivery] if self.delivery else [])]

    def to_dict(self) -> dict[str, Any]:
        """``validation.json``: the summary for the manifest and the ledger (value-free)."""
        out: dict[str, Any] = {"success": self.success, "datasets": [s.to_dict() for s in self.summaries]}
        if self.delivery is not None:
            out["delivery"] = self.delivery.to_dict()
        if self.leak_check is not None:
            out["leak_check"] = self.leak_check
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def failed(self) -> list[str]:
        return [f"{s.dataset}: {f.expectation}" + (f"({f.column})" if f.column else "")
                + (f", {f.unexpected_count} unexpected" if f.unexpected_count else "")
                for s in self.all_summaries() for f in s.failures()]
