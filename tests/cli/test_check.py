"""``contract-extracts check``: every problem of a contract or catalogue file, against the catalogue and the source.

Each bad input is refused before anyone approves it, with the file, the key and the fix; nothing is read from
the source except its schema (``--source``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from demo.synthetic import write_demo_source
from tests.conftest import Workspace


def edit(path: Path, change: Callable[[dict], Any]) -> Path:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def claimants(d: dict) -> dict:
    return d["datasets"][0]["columns"]


@pytest.fixture
def source(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'claims.sqlite'}"
    write_demo_source(url, n_people=30)
    monkeypatch.setenv("AIRFLOW_CONN_DEMO_CLAIMS", url)
    return url


def test_demo_contracts_and_catalogue_pass_against_the_source(workspace: Workspace, source: str, cli_main,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(workspace.contracts_dir / "C-DEMO-001.yaml"), str(workspace.contracts_dir / "C-DEMO-002.yaml"),
             str(workspace.config_dir / "sources" / "demo_claims.yaml")]
    assert cli_main(["check", "--source", *files]) == 0
    out = capsys.readouterr().out
    assert out.count("ok  ") == 3 and out.count("source checked") == 2
    assert "catalogue demo_claims: 2 table(s), 16 column(s), 7 identifier(s); owner test-iam" in out
    assert "delivers catalogued quasi-identifiers (date_of_birth, sex, region) without a risk assessment" in out


ISSUE_13 = {
    "nino-kept": (lambda d: claimants(d).update(nino={"treatment": "keep"}),
                  "datasets[0].columns.nino: column 'nino' is an identifier in the source catalogue"),
    "postcode-kept": (lambda d: claimants(d).update(postcode={"treatment": "keep"}),
                      "datasets[0].columns.postcode: column 'postcode' is an identifier"),
    "free-text-switch": (lambda d: claimants(d).update(last_name={"treatment": "keep", "free_text": False}),
                         "datasets[0].columns.last_name: 'free_text' cannot be set in a contract"),
    "pg-authid": (lambda d: d["datasets"][0].update(table="pg_catalog.pg_authid"),
                  "datasets[0].table: table 'pg_catalog.pg_authid' belongs to the database system itself"),
    "sqlite-master": (lambda d: d["datasets"][0].update(table="sqlite_master"),
                      "datasets[0].table: table 'sqlite_master' belongs to the database system itself"),
    "mysql-user": (lambda d: d["datasets"][0].update(table="mysql.user"),
                   "datasets[0].table: table 'mysql.user' belongs to the database system itself"),
    "filter-on-names": (lambda d: d["datasets"][0]["filter"].update(last_name={"in": ["Smith", "Jones"]}),
                        "datasets[0].filter.last_name: column 'last_name' is an identifier; a filter on it would "
                        "select named people"),
    "blank-business-requirement": (lambda d: d.update(unmasked=[{"dataset": "claimants", "column": "region",
                                                                 "business_requirement": " " * 10}]),
                                   "unmasked[0].business_requirement: the business requirement must say in words"),
    "payments-of-everyone": (lambda d: d["datasets"][1].update(without_population="we want all the payments"),
                             "datasets[1].without_population: dataset 'payments' carries entity 'claimant'"),
}


@pytest.mark.parametrize(("change", "expected"), ISSUE_13.values(), ids=ISSUE_13.keys())
def test_each_bad_input_of_issue_13_is_refused(workspace: Workspace, cli_main, change, expected: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = edit(workspace.contracts_dir / "C-DEMO-001.yaml", change)
    assert cli_main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL  {path}" in err and f"{path}: {expected}" in err and "Fix:" in err, err


def test_every_problem_of_a_file_not_only_the_first(workspace: Workspace, cli_main,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = edit(workspace.contracts_dir / "C-DEMO-001.yaml", lambda d: (
        claimants(d).update(nino={"treatment": "keep"}, postcode={"treatment": "keep"}),
        d["datasets"][0]["filter"].update(last_name={"eq": "Smith"}),
        d["datasets"][1]["columns"].update(shoe_size={"treatment": "keep"})))
    assert cli_main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "(4 problem(s))" in err
    for key in ("datasets[0].columns.nino", "datasets[0].columns.postcode", "datasets[0].filter.last_name",
                "datasets[1].columns.shoe_size"):
        assert f"{path}: {key}: " in err, key


def test_a_bad_catalogue_file_lists_all_its_problems(workspace: Workspace, cli_main,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = edit(workspace.config_dir / "sources" / "demo_claims.yaml", lambda d: (
        d["tables"]["claimants"]["columns"]["nino"].pop("entity"),
        d["tables"]["claimants"]["columns"]["sex"].update({"class": "secret"})))
    assert cli_main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "(2 problem(s))" in err and "tables.claimants.columns.nino" in err and "tables.claimants.columns.sex" in err
    # Contracts on that source are refused while their catalogue is broken.
    assert cli_main(["check", str(workspace.contracts_dir / "C-DEMO-002.yaml")]) == 1
    assert "demo_claims.yaml" in capsys.readouterr().err


def test_a_contract_without_a_catalogue_is_refused(workspace: Workspace, cli_main,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = edit(workspace.contracts_dir / "C-DEMO-002.yaml", lambda d: d["source"].update(connection="hr_db"))
    assert cli_main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "sources/hr_db.yaml: source.connection: source 'hr_db' has no catalogue" in err and "Fix:" in err


def test_source_check_finds_what_would_fail_at_run_time(workspace: Workspace, source: str, cli_main,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # The catalogue lists columns the source lacks, and the contract uses a treatment its type does not accept.
    edit(workspace.config_dir / "sources" / "demo_claims.yaml", lambda d: d["tables"]["claimants"]["columns"].update(
        shoe_size={"class": "other", "description": "Shoe size."},
        email={"class": "identifier", "entity": "person_email", "canonicaliser": "email", "description": "E-mail."}))
    path = edit(workspace.contracts_dir / "C-DEMO-001.yaml", lambda d: claimants(d).update(
        shoe_size={"treatment": "keep"}, region={"treatment": "date_shift", "entity": "claimant"},
        sex={"treatment": "round", "base": 5}))
    assert cli_main(["check", str(path)]) == 0, "without --source only the file and the catalogue are checked"
    capsys.readouterr()
    assert cli_main(["check", "--source", str(path)]) == 1
    err = capsys.readouterr().err
    assert "(4 problem(s))" in err, err
    assert f"{path}: datasets[0].columns.shoe_size: column 'shoe_size' does not exist in table 'claimants'" in err
    assert f"{path}: datasets[0].columns.region: date_shift needs a date or timestamp column" in err
    assert f"{path}: datasets[0].columns.sex: round needs a numeric column" in err
    assert (f"{path}: datasets[0].table: the catalogue lists identifier 'email' of table 'claimants', which the "
            "source does not have") in err


def test_source_check_names_a_missing_table(workspace: Workspace, source: str, cli_main,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    engine = sa.create_engine(source)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE payments")
    engine.dispose()
    path = workspace.contracts_dir / "C-DEMO-001.yaml"
    assert cli_main(["check", "--source", str(path)]) == 1
    assert f"{path}: datasets[1].table: table 'payments' does not exist in source 'demo_claims'" in \
        capsys.readouterr().err


def test_source_check_refuses_a_system_database(workspace: Workspace, cli_main, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DEMO_CLAIMS", "mysql://root@127.0.0.1:3306/mysql")
    path = workspace.contracts_dir / "C-DEMO-002.yaml"
    assert cli_main(["check", "--source", str(path)]) == 1
    assert "the connection's database 'mysql' belongs to the database system" in capsys.readouterr().err
