"""The release-gate report is self-contained: no CDN stylesheet or script, no logo, no link out; it looks the same
with the network blocked (checked in Chromium) and its status column is never empty."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.ui import servers
from tests.validation.test_operator_report import pseudonym, write
from validation.model import ColumnRule, DatasetRules, DeliveryRules
from validation.operator_report import REPORT_CSP, render_report, report_dir
from validation.release_gate import validate_delivery


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    data = {"person": [pseudonym(i) for i in range(20)], "region": ["north"] * 19 + ["east"]}
    path = write(tmp / "people.parquet", data)
    rules = DeliveryRules(datasets=(DatasetRules("people", (
        ColumnRule("person", pseudonym=True, unique=True, type="string"),
        ColumnRule("region", type="string"),
    )),))
    result = validate_delivery({"people": path}, rules)
    folder = report_dir(tmp / "home", "C-TEST-1", "20260101T000000Z-abcdef12")
    return render_report(folder, result.all_summaries(), contract="C-TEST-1", delivery="20260101T000000Z-abcdef12",
                         documents={"validation.json": result.to_dict()})


def test_no_page_refers_to_anything_outside_its_folder(report: Path) -> None:
    for page in report.parent.glob("*.html"):
        text = page.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.IGNORECASE), page.name
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", text), page.name
        assert "<script" not in text.lower() and "<link" not in text.lower(), page.name
        assert 'href="../' not in text, page.name
        assert REPORT_CSP in text, "the page itself forbids the browser to fetch anything"
        assert "newsletter" not in text.lower() and "greatexpectations.io" not in text


def test_offline_in_chromium_it_is_styled_and_every_status_is_shown(report: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - deferred: a browser library, for this test

    os.environ.setdefault("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=servers.CHROMIUM, args=servers.CHROMIUM_ARGS)
        try:
            context = browser.new_context(offline=True)
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            assert "passed" in page.locator("body").inner_text()
            page.get_by_role("link", name="people").click()
            page.get_by_text("Table-Level Expectations").wait_for(timeout=10_000)
            statuses = page.locator(".fa-check-circle, .fa-times").evaluate_all(
                "icons => icons.map(i => getComputedStyle(i, '::before').content)")
            assert statuses and all("passed" in s for s in statuses), statuses
            header = page.locator("th").first.evaluate("th => getComputedStyle(th).textTransform")
            assert header == "uppercase", "the inline stylesheet applies"
        finally:
            browser.close()
    assert all(url.startswith("file://") for url in requests), requests
    assert len(requests) == 2  # the two pages themselves, nothing else
