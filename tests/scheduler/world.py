"""The contracts, keys, source and ledger the scheduler tier runs on: small, so the whole tier stays fast.

Every contract is the demo's manual-only C-DEMO-002 (one dataset of a 1,500-person SQLite source) under another id
and schedule, each for one scenario, plus one broken file next to them:

    C-DEMO-001    the demo's nightly  never unpaused: its contract tab shows rounding, top-coding, date shifts
    C-DEMO-002    manual only         a manual delivery with reference and reason; a REST trigger without them
    C-NIGHT-001   daily at ON_TIME    unpaused before its time: the scheduled (nightly) run delivers on time
    C-NIGHT-002   daily 3 hours ago   unpausing creates a run for the past time: skipped; a manual run with a
                                      typo in its conf: refused; a backfill: refused (not incremental)
    C-KILL-001    manual only         its extract task is killed with SIGKILL and retried: one delivery
    C-BAD-001     month 13            a file that does not load: an import error and a row on the UI page
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from demo.runner import ensure_keys, render_demo_contracts
from demo.synthetic import write_demo_source
from tests.authorisation.helpers import approve_for_tests, write_catalogues, write_registry
from tests.conftest import REPO

PEOPLE = 1_500


@dataclass(frozen=True)
class World:
    home: Path
    config_dir: Path
    keys: dict[str, Path]
    identities: Path
    source: Path
    ledger_url: str
    on_time: dt.datetime  # when C-NIGHT-001's schedule fires (UTC, whole minute)
    past: dt.datetime  # C-NIGHT-002's schedule time today, hours ago
    env: dict[str, str]

    @property
    def contracts_dir(self) -> Path:
        return self.config_dir / "contracts"


def _daily(at: dt.datetime) -> str:
    return f"{at.minute} {at.hour} * * *"


def _variant(template: dict[str, Any], contract: str, schedule: str | None) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(template))
    data.update(contract=contract, schedule=schedule, title=f"{data['title']} ({contract})")
    data["delivery"] = {"transport": "local", "path": contract.lower()}
    return data


def make_world(root: Path, ledger_url: str, *, start_in: dt.timedelta) -> World:
    """Write the state folder and configuration; sign approvals of every good contract into ``ledger_url``.

    ``start_in``: how long until C-NIGHT-001's schedule should fire (rounded up to a whole minute): long enough
    for Airflow to start and the test to unpause it first.
    """
    home = root / "state"
    keys = ensure_keys(home)
    config_dir = root / "configs"
    identities = home / "demo" / "identities"
    rendered = render_demo_contracts(REPO / "configs" / "contracts", config_dir / "contracts", identities)
    assert sorted(p.stem for p in rendered) == ["C-DEMO-001", "C-DEMO-002"]
    template = yaml.safe_load((config_dir / "contracts" / "C-DEMO-002.yaml").read_text())
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    on_time = now + dt.timedelta(minutes=1) + start_in - dt.timedelta(seconds=start_in.total_seconds() % 60)
    past = now - dt.timedelta(hours=3)
    for contract, schedule in (("C-NIGHT-001", _daily(on_time)), ("C-NIGHT-002", _daily(past)),
                               ("C-KILL-001", None)):
        (config_dir / "contracts" / f"{contract}.yaml").write_text(
            yaml.safe_dump(_variant(template, contract, schedule), sort_keys=False))
    bad = _variant(template, "C-BAD-001", None)
    bad_text = yaml.safe_dump(bad, sort_keys=False).replace("from: 2026-01-01", "from: 2026-13-01")
    assert "2026-13-01" in bad_text
    (config_dir / "contracts" / "C-BAD-001.yaml").write_text(bad_text)
    write_registry(config_dir, home)
    write_catalogues(config_dir)
    source = home / "demo" / "claims.sqlite"
    write_demo_source(f"sqlite:///{source}", n_people=PEOPLE)
    env = {
        "CONTRACT_EXTRACTS_HOME": str(home),
        "CONTRACT_EXTRACTS_CONFIG_DIR": str(config_dir),
        "CONTRACT_EXTRACTS_MASTER_KEY_FILE": str(keys["master"]),
        "CONTRACT_EXTRACTS_SIGNING_KEY_FILE": str(keys["signing"]),
        "CONTRACT_EXTRACTS_LEDGER_URL": ledger_url,
        "CONTRACT_EXTRACTS_INSECURE_UNKEYED_LEDGER": "1",  # read below with a plain Ledger(url)
        "CONTRACT_EXTRACTS_RETRY_DELAY_SECONDS": "2",  # the killed task's retry, without the 2-minute wait
        "AIRFLOW_CONN_DEMO_CLAIMS": f"sqlite:///{source}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        good = [p for p in sorted((config_dir / "contracts").glob("*.yaml")) if p.stem != "C-BAD-001"]
        approve_for_tests(config_dir, home, good, ledger_url=ledger_url)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return World(home=home, config_dir=config_dir, keys=keys, identities=identities, source=source,
                 ledger_url=ledger_url, on_time=on_time, past=past, env=env)
