"""Contract files: the demo contracts load, content hashing, and errors that name file, key and fix.

Variants are written to ``tmp_path``: the demo YAML is read with ``yaml.safe_load``, mutated, dumped.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pyrage
import pytest
import yaml

from contracts import Contract, content_hash, discover_contract_files, load_contract
from contracts.loading import contract_file_problems, parse_yaml
from core.errors import ConfigError, ContractError

REPO = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = REPO / "configs" / "contracts"
DEMO_1 = CONTRACTS_DIR / "C-DEMO-001.yaml"
DEMO_2 = CONTRACTS_DIR / "C-DEMO-002.yaml"


def demo_data(path: Path = DEMO_1) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write(tmp_path: Path, data: Any, name: str = "C-DEMO-001.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def write_text(tmp_path: Path, text: str, name: str = "C-DEMO-001.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_variant(tmp_path: Path, mutate: Callable[[dict], None], name: str = "C-DEMO-001.yaml") -> Contract:
    data = demo_data()
    mutate(data)
    return load_contract(write(tmp_path, data, name))


def new_age_key() -> str:
    return str(pyrage.x25519.Identity.generate().to_public())


# ---- the demo contracts --------------------------------------------------------------------------


def test_demo_contract_1_loads() -> None:
    c = load_contract(DEMO_1)
    assert c.contract == "C-DEMO-001"
    assert [d.name for d in c.datasets] == ["claimants", "payments"]
    claimants = c.dataset("claimants")
    assert list(claimants.columns) == ["id", "nino", "date_of_birth", "sex", "region", "benefit_code",
                                       "weekly_amount", "claim_start"]
    nino = claimants.columns["nino"]
    assert (nino.treatment, nino.entity, nino.canonicalise) == ("pseudonymise", "person", "nino")
    assert claimants.columns["date_of_birth"].treatment == "generalise"
    assert c.schedule == "0 2 * * *"
    assert c.linkage == "contract"
    assert c.valid.from_ == dt.date(2026, 1, 1)
    assert c.dag_id == "contract_c_demo_001"


def test_demo_contract_2_loads() -> None:
    c = load_contract(DEMO_2)
    assert c.contract == "C-DEMO-002"
    assert c.schedule is None
    assert [d.name for d in c.datasets] == ["claimants"]
    assert [r.name for r in c.recipients] == ["borealis-analyst"]


def test_discovery_is_sorted_and_finds_both_demo_contracts() -> None:
    files = discover_contract_files(CONTRACTS_DIR)
    assert [f.name for f in files] == sorted(f.name for f in files)
    assert {"C-DEMO-001.yaml", "C-DEMO-002.yaml"} <= {f.name for f in files}


def test_discovery_skips_hidden_and_other_files(tmp_path: Path) -> None:
    for name in ("B.yaml", "A.yml", ".hidden.yaml", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "dir.yaml").mkdir()
    assert [p.name for p in discover_contract_files(tmp_path)] == ["A.yml", "B.yaml"]
    assert discover_contract_files(tmp_path / "missing") == []


# ---- content hash -------------------------------------------------------------------------------


def test_content_hash_is_sha256_hex_and_differs_between_demo_contracts() -> None:
    h1, h2 = content_hash(load_contract(DEMO_1)), content_hash(load_contract(DEMO_2))
    assert re.fullmatch(r"[0-9a-f]{64}", h1)
    assert h1 != h2
    assert content_hash(load_contract(DEMO_1)) == h1


def _sorted_except_columns(text: str) -> str:
    """Every mapping's keys sorted, except each dataset's columns, whose order is the delivery order."""
    def order(value, parent_key=None):
        if isinstance(value, dict):
            items = value.items() if parent_key == "columns" else sorted(value.items())
            return {k: order(v, k) for k, v in items}
        if isinstance(value, list):
            return [order(v) for v in value]
        return value
    return yaml.safe_dump(order(yaml.safe_load(text)), sort_keys=False)


def test_reordering_columns_changes_the_content_hash(tmp_path: Path) -> None:
    """Column order is the delivery order, so it is part of what an approval covers."""
    source = DEMO_2
    data = yaml.safe_load(source.read_text())
    columns = data["datasets"][0]["columns"]
    data["datasets"][0]["columns"] = dict(reversed(list(columns.items())))
    target = tmp_path / "C-DEMO-002.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    assert content_hash(load_contract(target)) != content_hash(load_contract(source))


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


REFORMATS: dict[str, Callable[[str], str]] = {
    "comments-removed": lambda text: _strip_comments(text),
    "comments-added": lambda text: "# approved layout\n" + text.replace(
        "title:", "# a comment line\ntitle:") + "\n# trailing comment\n",
    "block-style": lambda text: yaml.safe_dump(yaml.safe_load(text), default_flow_style=False, sort_keys=False),
    "flow-style": lambda text: yaml.safe_dump(yaml.safe_load(text), default_flow_style=True, width=10_000,
                                              sort_keys=False),
    "keys-sorted-except-columns": lambda text: _sorted_except_columns(text),
    "keys-reversed": lambda text: yaml.safe_dump(
        dict(reversed(list(yaml.safe_load(text).items()))), sort_keys=False),
    "json-style-quoting": lambda text: yaml.safe_dump(yaml.safe_load(text), default_style='"', sort_keys=False),
    "wide-indent": lambda text: yaml.safe_dump(yaml.safe_load(text), indent=6, sort_keys=False),
    "crlf-line-ends": lambda text: text.replace("\n", "\r\n"),
}


@pytest.mark.parametrize("reformat", REFORMATS.values(), ids=REFORMATS.keys())
@pytest.mark.parametrize("demo", [DEMO_1, DEMO_2], ids=["C-DEMO-001", "C-DEMO-002"])
def test_content_hash_is_stable_across_yaml_layout(tmp_path: Path, demo: Path,
                                                   reformat: Callable[[str], str]) -> None:
    original = load_contract(demo)
    text = reformat(demo.read_text(encoding="utf-8"))
    assert text != demo.read_text(encoding="utf-8")
    variant = load_contract(write_text(tmp_path, text, demo.name))
    assert variant == original
    assert content_hash(variant) == content_hash(original)


def _set(*path: Any, value: Any) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return mutate


def _columns(data: dict) -> dict:
    return data["datasets"][0]["columns"]


FIELD_CHANGES: dict[str, Callable[[dict], None]] = {
    "title": _set("title", value="Benefit uptake evaluation (demo) v2"),
    "contractor": _set("contractor", value="Acme Research Limited"),
    "legal_gateway": _set("legal_gateway", value="another gateway"),
    "business_case": _set("business_case", value="BC-DEMO-4412"),
    "security_assurance.framework": _set("security_assurance", "framework", value="ISO27001"),
    "security_assurance.reference": _set("security_assurance", "reference", value="SARA-DEMO-09"),
    "security_assurance.expires": _set("security_assurance", "expires", value=dt.date(2030, 6, 29)),
    "valid.from": _set("valid", "from", value=dt.date(2026, 1, 2)),
    "valid.until": _set("valid", "until", value=dt.date(2030, 12, 30)),
    "schedule": _set("schedule", value="0 3 * * *"),
    "schedule-null": _set("schedule", value=None),
    "source.connection": _set("source", "connection", value="other_db"),
    "linkage": _set("linkage", value="delivery"),
    "sample-added": _set("sample", value={"fraction": 0.1, "max_records": 100}),
    "disclosure-added": _set("disclosure", value={"quasi_identifiers": ["sex"], "k": 5}),
    "unmasked-added": _set("unmasked", value=[{"dataset": "claimants", "column": "region",
                                               "business_requirement": "survey frame needs the region"}]),
    "dataset.name": lambda d: (d["datasets"][0].update(name="claimants_v2"), d["population"].update(
        dataset="claimants_v2")),
    "population.entity": lambda d: d["population"].update(entity="person"),
    "dataset.without_population": _set("datasets", 1, "without_population",
                                       value="payments are needed to measure uptake over time"),
    "dataset.table": _set("datasets", 0, "table", value="public.claimants"),
    "dataset.filter-value": _set("datasets", 0, "filter", "claim_start", "gte", value=dt.date(2016, 1, 2)),
    "dataset.filter-operator": _set("datasets", 0, "filter", "claim_start", value={"gt": dt.date(2016, 1, 1)}),
    "dataset.filter-removed": lambda d: d["datasets"][0].pop("filter"),
    "column.treatment": lambda d: _columns(d).update(sex={"treatment": "pseudonymise", "entity": "sex"}),
    "column.entity": lambda d: _columns(d)["nino"].update(entity="citizen"),
    "column.canonicaliser": lambda d: _columns(d)["nino"].update(canonicalise="text"),
    "column.removed": lambda d: _columns(d).pop("region"),
    "column.added": lambda d: _columns(d).update(postcode={"treatment": "keep"}),
    "column.renamed": lambda d: _columns(d).update(gender=_columns(d).pop("sex")),
    "dataset.removed": lambda d: d["datasets"].pop(1),
    "recipient.name": _set("recipients", 0, "name", value="acme-analyst-2"),
    "recipient.key": _set("recipients", 0, "age", value=new_age_key()),
    "recipient.added": lambda d: d["recipients"].append({"name": "second", "age": new_age_key()}),
    "delivery.path": _set("delivery", "path", value="acme-research-2"),
}


@pytest.mark.parametrize("mutate", FIELD_CHANGES.values(), ids=FIELD_CHANGES.keys())
def test_content_hash_changes_when_a_field_changes(tmp_path: Path, mutate: Callable[[dict], None]) -> None:
    original = content_hash(load_contract(DEMO_1))
    assert content_hash(load_variant(tmp_path, mutate)) != original


# ---- errors: ContractError naming file, key path and "Fix:" -------------------------------------


def _expect_error(path: Path, *fragments: str) -> ContractError:
    with pytest.raises(ContractError) as info:
        load_contract(path)
    text = str(info.value)
    assert str(path) in text, text
    assert "Fix:" in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert isinstance(info.value, ConfigError)
    return info.value


MUTATION_ERRORS: dict[str, tuple[Callable[[dict], None], tuple[str, ...]]] = {
    "unknown-top-level-key": (_set("colour", value="blue"), ("colour", "allowed keys here", "legal_gateway")),
    "unknown-nested-key": (_set("security_assurance", "level", value=3),
                           ("security_assurance.level", "allowed keys here: framework, reference, expires")),
    "column-empty-mapping": (lambda d: _columns(d).update(nino={}),
                             ("datasets[0].columns", "nino", "no treatment")),
    "column-null": (lambda d: _columns(d).update(nino=None), ("datasets[0].columns", "nino", "no treatment")),
    "column-without-treatment-key": (lambda d: _columns(d).update(nino={"entity": "person"}),
                                     ("datasets[0].columns", "nino", "no treatment")),
    "unknown-treatment": (lambda d: _columns(d).update(nino={"treatment": "hash"}),
                          ("datasets[0].columns.nino", "unknown treatment", "pseudonymise")),
    "unknown-canonicaliser": (lambda d: _columns(d)["nino"].update(canonicalise="soundex"),
                              ("datasets[0].columns.nino.canonicalise",)),
    "generalise-to-unknown-level": (lambda d: _columns(d)["date_of_birth"].update(to="fortnight"),
                            ("datasets[0].columns.date_of_birth.to",)),
    "missing-legal-gateway": (lambda d: d.pop("legal_gateway"), ("legal_gateway", "required key is missing")),
    "missing-business-case": (lambda d: d.pop("business_case"), ("business_case", "required key is missing")),
    "missing-recipients": (lambda d: d.pop("recipients"), ("recipients", "required key is missing")),
    "missing-entity": (lambda d: _columns(d)["nino"].pop("entity"),
                       ("datasets[0].columns.nino.entity", "required key is missing")),
    "lower-case-contract-id": (_set("contract", value="c-demo-001"), ("contract", "C-2026-017")),
    "contract-id-with-space": (_set("contract", value="C DEMO 001"), ("contract", "C-2026-017")),
    "contract-id-path": (_set("contract", value="../C-DEMO-001"), ("contract", "C-2026-017")),
    "invalid-age-key": (_set("recipients", 0, "age", value="age1notakey"), ("recipients[0].age", "age")),
    "ssh-key-as-age-key": (_set("recipients", 0, "age", value="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"),
                           ("recipients[0].age",)),
    "until-before-from": (_set("valid", "until", value=dt.date(2025, 12, 31)), ("valid", "'until' is before")),
    "cron-words": (_set("schedule", value="every night"), ("schedule", "cron")),
    "cron-four-fields": (_set("schedule", value="0 2 * *"), ("schedule", "cron")),
    "cron-six-fields": (_set("schedule", value="0 0 2 * * *"), ("schedule", "cron")),
    "unmasked-column-not-listed": (_set("unmasked", value=[{
        "dataset": "claimants", "column": "address", "business_requirement": "survey needs the address"}]),
        ("unmasked", "claimants.address", "not a listed column")),
    "unmasked-dataset-not-listed": (_set("unmasked", value=[{
        "dataset": "addresses", "column": "nino", "business_requirement": "survey needs the address"}]),
        ("unmasked", "addresses.nino", "not a listed column")),
    "bad-column-name": (lambda d: _columns(d).update({"nino; drop table x": {"treatment": "keep"}}),
                        ("datasets[0].columns",)),
    "bad-table-name": (_set("datasets", 0, "table", value="claimants; drop"), ("datasets[0].table",)),
    "raw-sql-filter": (_set("datasets", 0, "filter", value="claim_start > '2016-01-01'"),
                       ("datasets[0].filter",)),
    "duplicate-dataset-names": (lambda d: d["datasets"][1].update(name="claimants"), ("unique",)),
    "no-datasets": (_set("datasets", value=[]), ("datasets",)),
    "unknown-linkage": (_set("linkage", value="forever"), ("linkage",)),
    # System tables can never be read, catalogued or not.
    "pg-catalog-table": (_set("datasets", 0, "table", value="pg_catalog.pg_authid"),
                         ("datasets[0].table", "belongs to the database system itself", "Fix:")),
    "pg-table-on-search-path": (_set("datasets", 0, "table", value="pg_authid"), ("datasets[0].table", "system")),
    "information-schema": (_set("datasets", 0, "table", value="information_schema.tables"),
                           ("datasets[0].table", "system")),
    "sqlite-master": (_set("datasets", 0, "table", value="sqlite_master"), ("datasets[0].table", "system")),
    "mysql-user": (_set("datasets", 0, "table", value="mysql.user"), ("datasets[0].table", "system")),
    # A business requirement in real words, not blanks.
    "blank-business-requirement": (_set("unmasked", value=[{
        "dataset": "claimants", "column": "region", "business_requirement": " " * 10}]),
        ("unmasked[0].business_requirement", "in words")),
    "one-word-business-requirement": (_set("unmasked", value=[{
        "dataset": "claimants", "column": "region", "business_requirement": "aaaaaaaaaaaaaaaaaaaaa"}]),
        ("unmasked[0].business_requirement", "in words")),
    "free-text-switch": (lambda d: _columns(d).update(last_name={"treatment": "keep", "free_text": False}),
                         ("datasets[0].columns.last_name", "decided by the source catalogue", "docs/catalogue.md")),
    "population-dataset-unknown": (_set("population", "dataset", value="people"),
                                   ("population.dataset", "not a dataset")),
    "defining-dataset-without-population": (_set("datasets", 0, "without_population",
                                                 value="the claimants are the population themselves"),
                                            ("without_population", "cannot be without it")),
    "blank-without-population": (_set("datasets", 1, "without_population", value="   "),
                                 ("datasets[1].without_population", "in words")),
    "sample-of-another-entity": (_set("sample", value={"entity": "person", "fraction": 0.5}),
                                 ("sample.entity", "must draw the population's entity")),
}


@pytest.mark.parametrize(("mutate", "fragments"), MUTATION_ERRORS.values(), ids=MUTATION_ERRORS.keys())
def test_invalid_contract_raises_contract_error(tmp_path: Path, mutate: Callable[[dict], None],
                                                fragments: tuple[str, ...]) -> None:
    data = demo_data()
    mutate(data)
    _expect_error(write(tmp_path, data), *fragments)


def test_unknown_key_inside_column_lists_allowed_keys(tmp_path: Path) -> None:
    data = demo_data()
    _columns(data)["nino"]["salt"] = "x"
    error = _expect_error(write(tmp_path, data), "datasets[0].columns.nino.salt", "unknown key")
    assert "allowed keys here" in str(error)
    assert all(k in str(error) for k in ("treatment", "entity", "canonicalise"))


def test_unknown_key_inside_column_names_the_key_path(tmp_path: Path) -> None:
    data = demo_data()
    _columns(data)["nino"]["salt"] = "x"
    _expect_error(write(tmp_path, data), "datasets[0].columns.nino.salt", "unknown key 'salt'")


def test_file_name_must_match_contract_id(tmp_path: Path) -> None:
    path = write(tmp_path, demo_data(), name="C-DEMO-999.yaml")
    _expect_error(path, "contract", "C-DEMO-001", "rename")


def test_file_suffix_must_be_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, demo_data(), name="C-DEMO-001.txt")
    _expect_error(path, "contract")


YAML_TEXT_ERRORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "duplicate-key": ("contract: C-DEMO-001\ntitle: a\ncontractor: b\ntitle: c\n",
                      ("duplicate key 'title'", "line 4")),
    "duplicate-nested-key": ("contract: C-DEMO-001\nvalid:\n  from: 2026-01-01\n  from: 2026-02-01\n",
                             ("duplicate key 'from'", "line 4")),
    "alias": ("contract: C-DEMO-001\ntitle: &t Demo\ncontractor: *t\n", ("alias", "line 3")),
    "alias-of-mapping": ("contract: C-DEMO-001\nvalid: &v {from: 2026-01-01, until: 2027-01-01}\n"
                         "security_assurance: *v\n", ("alias", "line 3")),
    "merge-key-alias": ("contract: C-DEMO-001\nbase: &b {title: x}\nother:\n  <<: *b\n", ("alias", "line 4")),
    "syntax-error-bad-indent": ("contract: C-DEMO-001\ntitle: x\n  contractor: y\nlegal_gateway: z\n",
                                ("YAML syntax error", "line 3")),
    "syntax-error-unclosed-flow": ("contract: C-DEMO-001\ntitle: x\nvalid: {from: 2026-01-01\n"
                                   "contractor: y\nz: [1, 2\n", ("YAML syntax error", "line")),
    "tab-indent": ("contract: C-DEMO-001\nvalid:\n\tfrom: 2026-01-01\n", ("YAML syntax error", "line 3")),
    "list-document": ("- contract: C-DEMO-001\n- title: x\n", ("YAML mapping",)),
    "scalar-document": ("C-DEMO-001\n", ("YAML mapping",)),
    "empty-document": ("", ("YAML mapping",)),
    "comment-only-document": ("# nothing here\n", ("YAML mapping",)),
}


@pytest.mark.parametrize(("text", "fragments"), YAML_TEXT_ERRORS.values(), ids=YAML_TEXT_ERRORS.keys())
def test_invalid_yaml_raises_contract_error(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    _expect_error(write_text(tmp_path, text), *fragments)


def test_duplicate_key_in_otherwise_valid_demo_is_refused(tmp_path: Path) -> None:
    text = DEMO_1.read_text(encoding="utf-8")
    line_no = text.splitlines().index("contractor: Acme Research Ltd") + 2
    text = text.replace("contractor: Acme Research Ltd\n",
                        "contractor: Acme Research Ltd\ncontractor: Someone Else\n")
    _expect_error(write_text(tmp_path, text), "duplicate key 'contractor'", f"line {line_no}")


def test_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "C-DEMO-001.yaml"
    path.write_bytes(b"contract: C-DEMO-001\ntitle: \xff\xfe\n")
    _expect_error(path, "UTF-8")


def test_missing_file_is_a_contract_error(tmp_path: Path) -> None:
    _expect_error(tmp_path / "C-NOPE.yaml", "cannot read")


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "C-DEMO-001.yaml"
    path.write_text("# " + "x" * (1 << 20) + "\n")
    _expect_error(path, "1 MiB")


def test_error_names_the_second_dataset_by_index(tmp_path: Path) -> None:
    data = demo_data()
    data["datasets"][1]["columns"]["amount"] = {"treatment": "obfuscate"}
    _expect_error(write(tmp_path, data), "datasets[1].columns.amount", "unknown treatment")


def test_model_is_frozen() -> None:
    c = load_contract(DEMO_1)
    with pytest.raises(pydantic.ValidationError):
        c.title = "changed"  # type: ignore[misc]


def test_unmodified_dump_roundtrip_loads_identically(tmp_path: Path) -> None:
    original = load_contract(DEMO_1)
    again = load_contract(write(tmp_path, copy.deepcopy(demo_data())))
    assert again == original


@pytest.mark.parametrize("schedule", ["61 25 * * *", "banana banana banana banana banana"],
                         ids=["out-of-range", "five-words"])
def test_schedule_with_invalid_cron_fields_is_refused(tmp_path: Path, schedule: str) -> None:
    data = demo_data()
    data["schedule"] = schedule
    _expect_error(write(tmp_path, data), "schedule")


@pytest.mark.parametrize("schedule", ["@daily", "*/15 * * * *", "0 2 * * MON-FRI", "30 1 1,15 * *"],
                         ids=["preset", "step", "named-days", "list"])
def test_valid_schedules_load(tmp_path: Path, schedule: str) -> None:
    assert load_variant(tmp_path, _set("schedule", value=schedule)).schedule == schedule


def test_check_lists_every_problem_of_a_file(tmp_path: Path) -> None:
    """``contract_file_problems`` (what ``contract-extracts check`` prints): every error, not only the first."""
    data = demo_data()
    data["colour"] = "blue"
    data["datasets"][0]["table"] = "sqlite_master"
    _columns(data)["last_name"] = {"treatment": "keep", "free_text": False}
    contract, problems = contract_file_problems(write(tmp_path, data))
    assert contract is None
    text = "\n".join(str(p) for p in problems)
    assert len(problems) == 3, text
    assert "unknown key 'colour'" in text and "datasets[0].table" in text and "datasets[0].columns.last_name" in text
    assert all("Fix:" in str(p) and str(tmp_path) in str(p) for p in problems)

    data = demo_data()  # structurally valid, several contract-wide problems
    data["population"]["dataset"] = "people"
    data["unmasked"] = [{"dataset": "claimants", "column": "shoe_size",
                         "business_requirement": "the survey needs every shoe size"}]
    contract, problems = contract_file_problems(write(tmp_path, data, "C-OTHER-1.yaml"))
    assert contract is not None
    keys = [p.key for p in problems]
    assert keys == ["unmasked[0]", "population.dataset", "contract"], keys


# ---- bounded loading: every way a file can fail to load is one clear error for that file -----------------------

DEMO_LINES = DEMO_1.read_text(encoding="utf-8")


def _demo_with(old: str, new: str) -> str:
    assert old in DEMO_LINES, old
    return DEMO_LINES.replace(old, new, 1)


UNLOADABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    # Dates YAML recognises but the calendar does not: PyYAML raises a bare ValueError for these.
    "month-13": (_demo_with("from: 2026-01-01", "from: 2026-13-01"),
                 ("valid.from", "2026-13-01 is not a real calendar date", "month must be in 1..12", "YYYY-MM-DD")),
    "february-31": (_demo_with("until: 2030-12-31", "until: 2030-02-31"),
                    ("valid.until", "2030-02-31", "day is out of range for month")),
    "hour-25": ("contract: C-DEMO-001\nvalid: {from: 2026-01-01 25:00:00}\n", ("valid.from", "hour must be in")),
    "flow-date": ("contract: C-DEMO-001\nvalid: {from: 2026-02-30, until: 2027-01-01}\n", ("valid.from", "line 2")),
    # Tags PyYAML builds with Python exceptions of every kind (ValueError, TypeError, AttributeError).
    "bad-int-tag": ("contract: C-DEMO-001\nsample: {fraction: !!int abc}\n", ("sample.fraction", "whole number")),
    "bad-float-tag": ("contract: C-DEMO-001\nsample: {fraction: !!float x}\n", ("sample.fraction", "not a number")),
    "timestamp-tag-on-text": ("contract: C-DEMO-001\ntitle: !!timestamp soon\n", ("title", "cannot be read")),
    "set-tag-on-list": ("contract: C-DEMO-001\ntitle: !!set [1]\n", ("title", "mapping was expected")),
    "map-tag-on-scalar": ("contract: C-DEMO-001\ntitle: !!map x\n", ("title", "mapping was expected")),
    "list-as-key": ("contract: C-DEMO-001\n? [a, b]\n: 1\n", ("line 2", "plain name")),
    "mapping-as-key": ("contract: C-DEMO-001\nvalid: {{a: 1}: 2}\n", ("valid", "plain name")),
    "python-tag": ("contract: C-DEMO-001\ntitle: !!python/object/apply:os.system [id]\n", ("YAML syntax error",)),
    "binary-tag": ("contract: C-DEMO-001\ntitle: !!binary zzz\n", ("YAML syntax error", "base64")),
    "merge-key": ("contract: C-DEMO-001\nvalid:\n  <<: {from: 2026-01-01}\n", ("YAML syntax error", "line 3")),
    "two-documents": ("contract: C-DEMO-001\n---\ncontract: C-DEMO-002\n", ("YAML syntax error", "single document")),
    "yaml-2": ("%YAML 2.0\n---\ncontract: C-DEMO-001\n", ("YAML syntax error", "version")),
    "nul-byte": ("contract: C-DEMO-001\x00\n", ("YAML syntax error",)),
    "control-character": ("contract: C-DEMO-001\ntitle: a\x07b\n", ("YAML syntax error",)),
}


@pytest.mark.parametrize(("text", "fragments"), UNLOADABLE.values(), ids=UNLOADABLE.keys())
def test_every_kind_of_yaml_failure_is_one_contract_error(tmp_path: Path, text: str,
                                                         fragments: tuple[str, ...]) -> None:
    path = write_text(tmp_path, text)
    _expect_error(path, *fragments)
    contract, problems = contract_file_problems(path)  # what `contract-extracts check` prints
    assert contract is None and len(problems) == 1 and str(problems[0]) == str(_expect_error(path))


NESTED_20000 = {
    "flow-sequences": "contract: C-DEMO-001\ntitle: " + "[" * 20_000 + "]" * 20_000 + "\n",
    "flow-mappings": "contract: C-DEMO-001\ntitle: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n",
    "block-sequences-on-one-line": "contract: C-DEMO-001\ntitle:\n  " + "- " * 20_000 + "x\n",
    "indented-mappings": "contract: C-DEMO-001\ntitle:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 1_400)),
}


@pytest.mark.parametrize("text", NESTED_20000.values(), ids=NESTED_20000.keys())
def test_deep_nesting_is_refused_before_it_costs_anything(tmp_path: Path, text: str) -> None:
    """A title nested 20,000 levels deep took PyYAML 40-70 s and ended in RecursionError; the scanner now stops
    at the cap, so the refusal is immediate and names the line."""
    assert len(text.encode()) < (1 << 20)
    path = write_text(tmp_path, text)
    started = time.monotonic()
    error = _expect_error(path, "nested more than 32 levels deep", "line ")
    assert time.monotonic() - started < 2.0
    assert "RecursionError" not in str(error)


def test_nesting_up_to_the_cap_still_loads() -> None:
    text = "".join("  " * i + f"k{i}:\n" for i in range(31)) + "  " * 31 + "leaf: [[[1]]]\n"
    assert parse_yaml(text, "f.yaml") is not None  # 32 block levels, plus flow levels counted separately


def test_a_huge_file_is_refused_without_being_read(tmp_path: Path) -> None:
    """A 64 GiB (sparse) file: refused by its size, instantly; reading it first would exhaust the memory."""
    path = tmp_path / "C-DEMO-001.yaml"
    with path.open("wb") as handle:
        handle.truncate(64 << 30)
    started = time.monotonic()
    _expect_error(path, "larger than 1 MiB")
    assert time.monotonic() - started < 1.0


def test_a_file_at_the_size_cap_loads_its_errors_normally(tmp_path: Path) -> None:
    text = DEMO_LINES + "#" * ((1 << 20) - len(DEMO_LINES.encode()) - 1) + "\n"
    assert len(text.encode()) == 1 << 20
    assert load_contract(write_text(tmp_path, text)).contract == "C-DEMO-001"


def test_loading_never_lets_a_foreign_exception_escape(tmp_path: Path) -> None:
    """Fuzz: truncations and single-byte edits of a real contract raise ContractError or load, nothing else."""
    rng = random.Random(15)
    raw = DEMO_LINES.encode()
    alphabet = b"[]{}:-?!&*|>'\"#%@`,\t\n 0123456789-T:"
    for i in range(400):
        data = bytearray(raw[: rng.randrange(len(raw))] if i % 4 == 0 else raw)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.choice(alphabet)
        path = tmp_path / "C-DEMO-001.yaml"
        path.write_bytes(bytes(data))
        try:
            load_contract(path)
        except ContractError as exc:
            assert str(path) in str(exc) and "Fix:" in str(exc)
