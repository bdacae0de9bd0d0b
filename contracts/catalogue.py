"""The source catalogue: the data owner's classification of every table and column a contract may read.

One file per source connection, ``configs/sources/<connection>.yaml``, written and approved by the
source's Information Asset Manager with the same signatures and ledger records as a contract
(``authorisation.catalogue_approvals``)::

    source: claims_db                       # the connection id (the file is claims_db.yaml)
    title: Benefit claims
    owner: jane.doe                         # the IAM who owns it: a registered approver, who signs it
    tables:
      claimants:                            # as contracts name it: table or schema.table
        description: One row per claimant
        columns:
          nino:   {class: identifier, entity: person, canonicaliser: nino,
                   description: National Insurance number}
          sex:    {class: quasi_identifier, description: Sex as recorded, labels: {F: Female, M: Male}}
          weekly_amount: {class: sensitive, description: Weekly award, unit: GBP per week}
          notes:  {class: free_text, description: Case worker notes}
          benefit_code: {class: other, description: Benefit, labels: {UC: Universal Credit}}

Classes (docs/catalogue.md): ``identifier`` (direct: NINO, name, e-mail, phone, full address, postcode
unit; with the ``entity`` it identifies and its ``canonicaliser``), ``quasi_identifier`` (what others
could know: date of birth, sex, area), ``sensitive``, ``free_text`` (names, addresses, notes), ``other``.

What a contract may do follows from the class (``catalogue_problems``): read only catalogued tables and
columns; ``identifier`` → ``pseudonymise`` (with the catalogued entity and canonicaliser), ``suppress`` or
``unmasked``; ``free_text`` → ``suppress`` or ``unmasked``; ``keep`` only on ``other``, ``sensitive``,
``quasi_identifier``; no filter on an identifier or free text; every delivered quasi-identifier is a key
variable of the risk assessment. The contract's population (``population:``) restricts every other
dataset carrying its entity (``population_plan``).

A contract approval pins the catalogue's content hash; a later catalogue change that loosens a class of
a column of the tables a contract reads (``loosened``) needs a new approval of that contract.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from contracts.base import CONN_ID, ENTITY, TABLE, Strict, is_system_table
from contracts.column_treatments import Canonicaliser, Problem, Pseudonymise, Suppress
from contracts.disclosure import contract_aggregates
from contracts.loading import read_yaml_file, translate_error
from contracts.model import Contract, Dataset
from core.errors import ConfigError

CATALOGUE_FORMAT = "contract-extracts/catalogue/v1"
SOURCES_DIR = "sources"

ColumnClass = Literal["identifier", "quasi_identifier", "sensitive", "free_text", "other"]
CLASSES: tuple[str, ...] = ("identifier", "quasi_identifier", "sensitive", "free_text", "other")
#: What each class allows a contract to do with the column.
ALLOWED_TREATMENTS: dict[str, tuple[str, ...]] = {
    "identifier": ("pseudonymise", "suppress", "unmasked"),
    "free_text": ("suppress", "unmasked"),
}
#: Classes whose values never reach Parquet statistics, filters, group-by columns or ledger marks.
PROTECTED = ("identifier", "free_text")
APPROVER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
ColumnName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]


class CatalogueError(ConfigError):
    """A source catalogue file is invalid (names the file, the key and the fix)."""


class CatalogueColumn(Strict):
    class_: ColumnClass = Field(alias="class")
    description: str = Field(min_length=1, max_length=1000)
    unit: str | None = Field(default=None, min_length=1, max_length=200)
    labels: dict[str, str] | None = Field(default=None, min_length=1, max_length=1000,
                                          description="value labels of a coded column: code → meaning")
    entity: str | None = Field(default=None, pattern=ENTITY, description="identifier: whom it identifies")
    canonicaliser: Canonicaliser | None = Field(default=None, description="identifier: how values compare")

    @field_validator("description", "unit")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be words, not blank")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        # YAML reads `1: Pension` with an integer key; codes are compared as text.
        if isinstance(value, dict):
            return {(str(k) if isinstance(k, int) and not isinstance(k, bool) else k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _options_fit_the_class(self) -> CatalogueColumn:
        if self.class_ == "identifier":
            if self.entity is None or self.canonicaliser is None:
                raise ValueError("an identifier needs 'entity' (whom it identifies, e.g. person) and 'canonicaliser' "
                                 "(nino, postcode, email, phone, text or integer)")
        elif self.entity is not None or self.canonicaliser is not None:
            raise ValueError("'entity' and 'canonicaliser' belong to class identifier; remove them, or classify the "
                             "column as identifier")
        if self.labels is not None and self.class_ in PROTECTED:
            raise ValueError(f"value labels describe coded columns; a {self.class_} column has none")
        return self

    @property
    def descriptor(self) -> str:
        """The class as compared between catalogue versions: ``identifier/<entity>/<canonicaliser>`` or the class."""
        if self.class_ == "identifier":
            return f"identifier/{self.entity}/{self.canonicaliser}"
        return self.class_


class CatalogueTable(Strict):
    description: str = Field(min_length=1, max_length=1000)
    columns: dict[ColumnName, CatalogueColumn] = Field(min_length=1, max_length=2000)


class Catalogue(Strict):
    source: str = Field(pattern=CONN_ID, description="the source connection id; the file is <source>.yaml")
    title: str = Field(min_length=1, max_length=200)
    owner: str = Field(pattern=APPROVER_NAME, description="the Information Asset Manager who owns and signs it")
    tables: dict[Annotated[str, Field(pattern=TABLE)], CatalogueTable] = Field(min_length=1, max_length=1000)

    def canonical(self) -> dict[str, Any]:
        """What an approval covers: every field, independent of YAML layout, comments and key order."""
        return {"format": CATALOGUE_FORMAT, **self.model_dump(mode="json", by_alias=True)}

    @property
    def content_sha256(self) -> str:
        return canonical_sha256(self.canonical())

    @classmethod
    def from_canonical(cls, data: Mapping[str, Any]) -> Catalogue:
        """The catalogue of a canonical form (as an approval records it); ``ValueError`` if it is not one."""
        if not isinstance(data, Mapping) or data.get("format") != CATALOGUE_FORMAT:
            raise ValueError("not a canonical catalogue")
        try:
            return cls.model_validate({k: v for k, v in data.items() if k != "format"})
        except ValidationError:
            raise ValueError("not a valid catalogue") from None

    def classes(self) -> dict[str, dict[str, str]]:
        """Table → column → descriptor: what a contract approval is judged against later (no values)."""
        return {name: {c: col.descriptor for c, col in table.columns.items()} for name, table in self.tables.items()}

    def column(self, table: str, column: str) -> CatalogueColumn | None:
        entry = self.tables.get(table)
        return None if entry is None else entry.columns.get(column)

    def identifiers(self, table: str) -> list[str]:
        """The table's identifier columns (every one is searched for by the release gate's leak check)."""
        entry = self.tables.get(table)
        return [] if entry is None else [c for c, col in entry.columns.items() if col.class_ == "identifier"]

    def carriers(self, table: str, entity: str) -> list[str]:
        """The table's identifier columns of ``entity``."""
        entry = self.tables.get(table)
        return [] if entry is None else [c for c, col in entry.columns.items()
                                         if col.class_ == "identifier" and col.entity == entity]


def canonical_sha256(canonical: Mapping[str, Any]) -> str:
    """SHA-256 (lowercase hex) of a catalogue's canonical form as sorted, compact JSON."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- files --------------------------------------------------------------------------------------------


def catalogue_path(config_dir: Path, connection: str) -> Path:
    return config_dir / SOURCES_DIR / f"{connection}.yaml"


def is_catalogue_document(data: Any) -> bool:
    """Whether a parsed YAML document is a catalogue (``tables:``) rather than a contract (``contract:``)."""
    return isinstance(data, dict) and "tables" in data and "contract" not in data


def catalogue_file_problems(path: Path) -> tuple[Catalogue | None, list[CatalogueError]]:
    """Every problem of one catalogue file: (the catalogue if it could be read, problems)."""
    file = str(path)
    try:
        data = read_yaml_file(path, kind="a source catalogue", error=CatalogueError)
    except ConfigError as exc:
        return None, [_as_catalogue_error(exc)]
    if not isinstance(data, dict):
        return None, [CatalogueError("the file must hold a YAML mapping", file=file,
                                     fix="start with 'source: <connection>' (see docs/catalogue.md)")]
    try:
        catalogue = Catalogue.model_validate(data)
    except ValidationError as exc:
        out: list[CatalogueError] = []
        for err in exc.errors(include_url=False, include_input=False):
            problem = _as_catalogue_error(translate_error(err, file), catalogue_hint=True)
            if str(problem) not in {str(p) for p in out}:
                out.append(problem)
        return None, out
    problems = [CatalogueError(message, file=file, key=key, fix=fix) for key, message, fix in _rules(catalogue)]
    if path.suffix not in (".yaml", ".yml") or path.stem != catalogue.source:
        problems.append(CatalogueError(f"file name does not match the source {catalogue.source!r}", file=file,
                                       key="source", fix=f"name the file {catalogue.source}.yaml (the connection id)"))
    return catalogue, problems


def load_catalogue(path: Path) -> Catalogue:
    """Read and check one catalogue file; raise ``CatalogueError`` naming the first problem (and how many more)."""
    catalogue, problems = catalogue_file_problems(path)
    if problems:
        first = problems[0]
        more = f" ({len(problems) - 1} more problem(s): run 'contract-extracts check {path}')" if len(problems) > 1 \
            else ""
        raise CatalogueError(first.detail + more, file=first.file, key=first.key, fix=first.fix)
    assert catalogue is not None
    return catalogue


def load_catalogue_for(contract: Contract, config_dir: Path) -> tuple[Catalogue, Path]:
    """The catalogue of the contract's source connection (fail closed: no catalogue, no reading)."""
    path = catalogue_path(config_dir, contract.source.connection)
    if not path.is_file():
        raise CatalogueError(f"source {contract.source.connection!r} has no catalogue", file=str(path),
                             key="source.connection",
                             fix="the source's Information Asset Manager writes and approves its catalogue "
                                 "(docs/catalogue.md); nothing can be read from an uncatalogued source")
    return load_catalogue(path), path


def _as_catalogue_error(exc: ConfigError, *, catalogue_hint: bool = False) -> CatalogueError:
    fix = exc.fix
    if catalogue_hint and fix and "docs/contracts.md" in fix:
        fix = "see docs/catalogue.md"
    return CatalogueError(exc.detail, file=exc.file, key=exc.key, fix=fix)


def _rules(catalogue: Catalogue) -> list[tuple[str, str, str]]:
    """(key, message, fix) of the catalogue-wide rules pydantic cannot see per field."""
    out: list[tuple[str, str, str]] = []
    for name in catalogue.tables:
        if is_system_table(name):
            out.append((f"tables.{name}", f"table {name!r} belongs to the database system itself",
                        "remove it: system tables (pg_catalog, information_schema, sqlite_master, mysql, …) can "
                        "never be catalogued or read"))
    return out


# ---- contracts against the catalogue ------------------------------------------------------------------


@dataclass(frozen=True)
class PopulationPlan:
    """The population as extraction applies it: source columns carrying the entity, per dataset."""

    entity: str
    dataset: str  # the defining dataset: its filter (and the sample) select the population
    column: str  # the defining dataset's source column carrying the entity
    restricted: Mapping[str, str]  # every other dataset carrying the entity → its column (semi-joined)

    def to_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "dataset": self.dataset, "column": self.column,
                "restricted": dict(self.restricted)}


def _carrier(dataset: Dataset, catalogue: Catalogue, entity: str) -> tuple[str | None, str | None]:
    """(the dataset's column carrying ``entity``, or None; a problem in words, or None)."""
    carriers = catalogue.carriers(dataset.table, entity)
    if dataset.population_by is not None:
        if dataset.population_by not in carriers:
            return None, (f"population_by {dataset.population_by!r} is not an identifier of entity {entity!r} in "
                          f"table {dataset.table!r} of the catalogue")
        return dataset.population_by, None
    if len(carriers) > 1:
        return None, (f"table {dataset.table!r} carries entity {entity!r} in {len(carriers)} columns "
                      f"({', '.join(carriers)})")
    return (carriers[0] if carriers else None), None


def population_plan(contract: Contract, catalogue: Catalogue) -> PopulationPlan | None:
    """The contract's population as extraction applies it (None: the contract names none).

    Only meaningful for a contract without ``catalogue_problems``; raises ``ConfigError`` otherwise.
    """
    population = contract.population
    if population is None:
        return None
    defining = contract.dataset(population.dataset)
    column, problem = _carrier(defining, catalogue, population.entity)
    if column is None:
        raise ConfigError(problem or f"dataset {defining.name!r} does not carry entity {population.entity!r}",
                          key="population", fix="run 'contract-extracts check' on the contract")
    restricted: dict[str, str] = {}
    for dataset in contract.datasets:
        if dataset.name == defining.name:
            continue
        carrier, problem = _carrier(dataset, catalogue, population.entity)
        if problem is not None:
            raise ConfigError(problem, key=f"datasets.{dataset.name}", fix="run 'contract-extracts check'")
        if carrier is not None:
            restricted[dataset.name] = carrier
    return PopulationPlan(entity=population.entity, dataset=defining.name, column=column, restricted=restricted)


def catalogue_problems(contract: Contract, catalogue: Catalogue) -> list[Problem]:
    """Everything the catalogue forbids in ``contract`` (every problem, each with its key and fix)."""
    problems: list[Problem] = []
    ask = (f"ask the source's Information Asset Manager ({catalogue.owner}) to catalogue it in "
           f"configs/sources/{catalogue.source}.yaml, or leave it out")
    if contract.source.connection != catalogue.source:
        problems.append(Problem("source.connection", f"the contract reads {contract.source.connection!r} but the "
                                f"catalogue describes {catalogue.source!r}",
                                "check the contract against its own source's catalogue"))
        return problems
    for i, dataset in enumerate(contract.datasets):
        where = f"datasets[{i}]"
        if is_system_table(dataset.table):
            continue  # refused by the contract model already
        entry = catalogue.tables.get(dataset.table)
        if entry is None:
            problems.append(Problem(f"{where}.table", f"table {dataset.table!r} is not in the source catalogue",
                                    f"read only catalogued tables; {ask}"))
            continue
        for name, treatment in dataset.columns.items():
            problems += _column_problems(f"{where}.columns.{name}", dataset, name, treatment,
                                         entry.columns.get(name), ask)
        for name in dataset.filter:
            column = entry.columns.get(name)
            if column is None:
                problems.append(Problem(f"{where}.filter.{name}", f"filter column {name!r} is not in the source "
                                        f"catalogue for table {dataset.table!r}",
                                        f"filter only on catalogued columns; {ask}"))
            elif column.class_ in PROTECTED:
                problems.append(Problem(f"{where}.filter.{name}", f"column {name!r} is {_a(column.class_)}; a "
                                        "filter on it would select named people",
                                        "filter on non-identifying columns (dates, codes, areas) only"))
        partition = dataset.partition.column if dataset.partition is not None else None
        if partition is not None and entry.columns.get(partition) is None:
            problems.append(Problem(f"{where}.partition.column", f"partition column {partition!r} is not in the "
                                    "source catalogue", f"partition on a catalogued column; {ask}"))
        if contract.incremental is not None:
            column = entry.columns.get(contract.incremental.column)
            if column is None:
                problems.append(Problem("incremental.column", f"incremental column {contract.incremental.column!r} "
                                        f"is not in the source catalogue for table {dataset.table!r}",
                                        f"use a catalogued timestamp or increasing id; {ask}"))
            elif column.class_ in PROTECTED:
                problems.append(Problem("incremental.column", f"incremental column {contract.incremental.column!r} "
                                        f"is {_a(column.class_)} in table {dataset.table!r}; its marks are "
                                        "recorded in the ledger", "use a timestamp or a row number that is not "
                                        "an identifier"))
    problems += _disclosure_problems(contract, catalogue)
    problems += _population_problems(contract, catalogue)
    return problems


def _a(cls: str) -> str:
    return {"identifier": "an identifier", "free_text": "free text", "quasi_identifier": "a quasi-identifier",
            "sensitive": "sensitive", "other": "'other'"}[cls]


def _column_problems(key: str, dataset: Dataset, name: str, treatment: Any, column: CatalogueColumn | None,
                     ask: str) -> list[Problem]:
    if column is None:
        return [Problem(key, f"column {name!r} of table {dataset.table!r} is not in the source catalogue",
                        f"read only catalogued columns; {ask}")]
    cls = column.class_
    allowed = ALLOWED_TREATMENTS.get(cls)
    if allowed is not None and treatment.treatment not in allowed:
        if cls == "identifier":
            fix = (f"pseudonymise it (entity: {column.entity}, canonicalise: {column.canonicaliser}), suppress "
                   "it, or deliver it 'unmasked' with a business requirement approved by two approvers, one an "
                   "Information Asset Manager")
        else:
            fix = ("leave it out, suppress it, or deliver it 'unmasked' with a business requirement approved by "
                   "two approvers, one an Information Asset Manager")
        return [Problem(key, f"column {name!r} is {_a(cls)} in the source catalogue; it cannot be given treatment "
                        f"{treatment.treatment!r}", fix)]
    problems = []
    if (isinstance(treatment, Pseudonymise) and cls == "identifier"
            and (treatment.entity, treatment.canonicalise) != (column.entity, column.canonicaliser)):
            problems.append(Problem(key, f"column {name!r} is catalogued as an identifier of entity "
                                    f"{column.entity!r} (canonicaliser {column.canonicaliser!r}); the contract "
                                    f"pseudonymises it as {treatment.entity!r} ({treatment.canonicalise!r})",
                                    f"use entity: {column.entity}, canonicalise: {column.canonicaliser}"))
    return problems


def catalogue_key_variables(contract: Contract, catalogue: Catalogue) -> list[str]:
    """Every delivered quasi-identifier (not suppressed, not pseudonymised): key variables by default."""
    out: list[str] = []
    for dataset in contract.datasets:
        for name, treatment in dataset.columns.items():
            column = catalogue.column(dataset.table, name)
            if (column is not None and column.class_ == "quasi_identifier"
                    and not isinstance(treatment, Suppress | Pseudonymise) and name not in out):
                out.append(name)
    return out


def with_catalogue_keys(contract: Contract, catalogue: Catalogue) -> Contract:
    """The contract as its risk assessment runs: every delivered catalogued quasi-identifier is a key variable.

    The contract's own ``quasi_identifiers`` and ``contractor_holds`` are kept (they may add, never remove).
    A contract without ``disclosure`` has no risk assessment and is returned unchanged (``check`` says so).
    """
    disclosure = contract.disclosure
    if disclosure is None:
        return contract
    catalogued = [c for c in catalogue_key_variables(contract, catalogue) if c not in disclosure.key_columns]
    if not catalogued:
        return contract
    widened = disclosure.model_copy(update={"quasi_identifiers": [*disclosure.quasi_identifiers, *catalogued]})
    return contract.model_copy(update={"disclosure": widened})


def _disclosure_problems(contract: Contract, catalogue: Catalogue) -> list[Problem]:
    problems: list[Problem] = []
    d = contract.disclosure
    keys = catalogue_key_variables(contract, catalogue)
    if d is not None:
        clash = sorted(set(keys) & set(d.sensitive_columns))
        for column in clash:
            problems.append(Problem("disclosure.sensitive", f"column {column!r} is a quasi-identifier in the source "
                                    "catalogue, so it is a key variable of the risk assessment; it cannot also be a "
                                    "sensitive attribute", f"remove {column} from disclosure.sensitive"))
        names = {ds.name: ds for ds in contract.datasets}
        for dataset_name, columns in (d.source_identifiers or {}).items():
            ds = names.get(dataset_name)
            if ds is None:
                continue
            for column in columns:
                if catalogue.column(ds.table, column) is None:
                    problems.append(Problem(f"disclosure.source_identifiers.{dataset_name}", f"column {column!r} is "
                                            "not in the source catalogue", "name catalogued columns only (every "
                                            "catalogued identifier is searched for anyway)"))
    by_name = {ds.name: ds for ds in contract.datasets}
    for i, agg in enumerate(contract_aggregates(contract)):
        ds = by_name.get(agg.dataset)
        if ds is None:
            continue
        for column in [*agg.by, *(c for _, c in agg.kinds() if c), *(c for c in (agg.unit, agg.weight) if c)]:
            entry = catalogue.column(ds.table, column)
            if entry is not None and entry.class_ in PROTECTED and column != agg.unit:
                problems.append(Problem(f"aggregates[{i}]", f"column {column!r} is {_a(entry.class_)}; a table "
                                        "cannot be grouped by it or measure it", "group by non-identifying columns"))
    return problems


def _population_problems(contract: Contract, catalogue: Catalogue) -> list[Problem]:
    problems: list[Problem] = []
    catalogued = [d for d in contract.datasets if d.table in catalogue.tables]
    if len(catalogued) != len(contract.datasets):
        return problems  # uncatalogued tables are reported already
    population = contract.population
    if population is None:
        entities = sorted({catalogue.tables[d.table].columns[c].entity or "" for d in catalogued
                           for c in catalogue.identifiers(d.table)})
        if entities:
            problems.append(Problem("population", "the contract names no population (whose records it delivers)",
                                    "add 'population: {entity: <entity>, dataset: <dataset>}': the dataset whose "
                                    "filter (and sample) select the people; entities in the catalogue of these "
                                    f"tables: {', '.join(entities)}"))
        for i, dataset in enumerate(contract.datasets):
            if not entities and dataset.without_population is None:
                problems.append(Problem(f"datasets[{i}].without_population", f"dataset {dataset.name!r} carries no "
                                        "entity and the contract names no population",
                                        "state why the dataset is needed: without_population: '<why>'"))
        return problems
    for i, dataset in enumerate(contract.datasets):
        where = f"datasets[{i}]"
        carrier, problem = _carrier(dataset, catalogue, population.entity)
        if problem is not None:
            problems.append(Problem(f"{where}.population_by", problem,
                                    f"name the column carrying the {population.entity} with population_by: <column>"))
            continue
        defining = dataset.name == population.dataset
        if carrier is None:
            if defining:
                problems.append(Problem("population.entity", f"dataset {dataset.name!r} (table {dataset.table!r}) "
                                        f"has no identifier of entity {population.entity!r} in the catalogue",
                                        "name an entity its table carries, or another defining dataset"))
            elif dataset.without_population is None:
                problems.append(Problem(f"{where}.without_population", f"dataset {dataset.name!r} (table "
                                        f"{dataset.table!r}) does not carry entity {population.entity!r}, so it cannot "
                                        "be restricted to the contract's population",
                                        "leave it out, or state why it is needed: without_population: '<why>'"))
            continue
        if dataset.without_population is not None and not defining:
            problems.append(Problem(f"{where}.without_population", f"dataset {dataset.name!r} carries entity "
                                    f"{population.entity!r} (column {carrier!r}), so it is restricted to the "
                                    "population; it cannot be exempted", "remove without_population"))
        treatment = dataset.columns.get(carrier)
        canonicaliser = catalogue.tables[dataset.table].columns[carrier].canonicaliser
        if not (isinstance(treatment, Pseudonymise) and treatment.entity == population.entity):
            problems.append(Problem(f"{where}.columns.{carrier}", f"column {carrier!r} carries the population's "
                                    f"entity {population.entity!r} but is not delivered pseudonymised with it, so the "
                                    "release gate cannot check that every row belongs to the population",
                                    f"add {carrier}: {{treatment: pseudonymise, entity: {population.entity}, "
                                    f"canonicalise: {canonicaliser}}}"))
    return problems


def loosened(before: Mapping[str, Mapping[str, str]], after: Mapping[str, Mapping[str, str]],
             tables: Iterable[str]) -> list[str]:
    """In words, every column of ``tables`` whose class is less strict in ``after`` than in ``before``.

    Stricter (never loosening): other < sensitive < quasi_identifier < identifier, free_text. An identifier
    whose entity or canonicaliser changes, a column between identifier and free text, and a column no longer
    catalogued all count as loosened: the leak check, the population and the treatments rest on them.
    """
    rank = {"other": 0, "sensitive": 1, "quasi_identifier": 2}
    out: list[str] = []
    for table in sorted(set(tables)):
        old, new = before.get(table, {}), after.get(table, {})
        for column in sorted(old):
            was, now = old[column], new.get(column)
            if now is None:
                out.append(f"{table}.{column} ({was}) is no longer catalogued")
            elif now != was and (was not in rank or (now in rank and rank[now] < rank[was])):
                out.append(f"{table}.{column}: {was} → {now}")
    return out


def statistics_columns(dataset: Dataset, catalogue: Catalogue | None) -> list[str] | bool:
    """The delivered columns whose Parquet statistics may be written: never those of identifiers or free text.

    ``False`` (no statistics at all) when there is no catalogue to tell.
    """
    if catalogue is None:
        return False
    out = []
    for name in dataset.columns:
        column = catalogue.column(dataset.table, name)
        if column is not None and column.class_ not in PROTECTED:
            out.append(name)
    return out


def protected_columns(dataset: Dataset, catalogue: Catalogue) -> list[str]:
    """The dataset's delivered columns that are identifiers or free text in the catalogue."""
    return [name for name in dataset.columns
            if (c := catalogue.column(dataset.table, name)) is not None and c.class_ in PROTECTED]


def describe_column(catalogue: Catalogue | None, table: str, column: str) -> tuple[str | None, str | None,
                                                                                   dict[str, str] | None]:
    """(description, unit, value labels) of a column for the codebook (None where the catalogue has none)."""
    entry = None if catalogue is None else catalogue.column(table, column)
    if entry is None:
        return None, None, None
    return entry.description.strip(), entry.unit, entry.labels


def contract_tables(contract: Contract) -> list[str]:
    return list(dict.fromkeys(d.table for d in contract.datasets))


__all__ = [
    "CATALOGUE_FORMAT",
    "CLASSES",
    "Catalogue",
    "CatalogueColumn",
    "CatalogueError",
    "CatalogueTable",
    "PopulationPlan",
    "catalogue_file_problems",
    "catalogue_key_variables",
    "catalogue_path",
    "catalogue_problems",
    "contract_tables",
    "describe_column",
    "is_catalogue_document",
    "load_catalogue",
    "load_catalogue_for",
    "loosened",
    "population_plan",
    "protected_columns",
    "statistics_columns",
    "with_catalogue_keys",
]
