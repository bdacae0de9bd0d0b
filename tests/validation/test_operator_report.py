"""The operator's Data Docs report: private folders and files, and no data values on any page."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from validation.leakage import IdentifierSample
from validation.model import ColumnRule, DatasetRules, DeliveryRules, DisclosureCheck, Domain
from validation.operator_report import render_report, report_dir
from validation.release_gate import validate_delivery

SECRET = "AB123456C"


def pseudonym(i: int) -> str:
    return hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()


def write(path: Path, data: dict[str, list], types: dict | None = None) -> Path:
    types = types or {}
    pq.write_table(pa.table({k: pa.array(v, types.get(k)) for k, v in data.items()}), path)
    return path


def test_the_operator_report_holds_no_values(tmp_path: Path) -> None:
    data = {"person": [pseudonym(i) for i in range(20)], "region": ["north"] * 20, "year": [1970] * 20}
    data["person"][3] = SECRET  # bad pseudonym
    data["region"][4] = SECRET.lower()  # leaked identifier
    data["year"][5] = 1234567  # outside its domain
    path = write(tmp_path / "people.parquet", data, {"year": pa.int32()})
    rules = DeliveryRules(datasets=(DatasetRules("people", (
        ColumnRule("person", pseudonym=True, unique=True, leak="exact", type="string"),
        ColumnRule("region", leak="substring", domains=(Domain("in_set", values=("north", "south")),)),
        ColumnRule("year", domains=(Domain("between", min_value=1850, max_value=2027),)),
    )),), disclosure=(DisclosureCheck("people", ("region", "year"), (), 3),))
    result = validate_delivery({"people": path}, rules, identifiers=IdentifierSample.from_values([SECRET]))
    assert not result.success
    folder = report_dir(tmp_path / "home", "C-TEST-1", "20260101T000000Z-abcdef12")
    index = render_report(folder, result.all_summaries(), contract="C-TEST-1", delivery="20260101T000000Z-abcdef12",
                          documents={"validation.json": result.to_dict()})
    assert index.exists()
    pages = sorted(p.name for p in folder.iterdir())
    assert pages == ["index.html", "people.html", "validation.json"]
    for level in (tmp_path / "home" / "reports", folder.parent, folder):
        assert stat.S_IMODE(os.stat(level).st_mode) == 0o700
    for page in folder.iterdir():
        assert stat.S_IMODE(os.stat(page).st_mode) == 0o600
        text = page.read_text()
        for value in (SECRET, SECRET.lower(), "1234567"):
            assert value not in text, (page.name, value)
    html = (folder / "people.html").read_text()
    assert "expect_column_values_to_not_contain_source_identifiers" in html
    assert "Unsuccessful Expectations" in html
