"""The operator's validation report: Great Expectations Data Docs pages, rendered from value-free outcomes.

GX Data Docs render whatever a validation result holds, including ``partial_unexpected_list`` and
``unexpected_list`` (sample failing values), ``unexpected_index_list`` and exception messages. So the
report is never rendered from GX's own results: each page is built from the gate's value-free
``ExpectationOutcome``s (expectation configuration with value-free kwargs, success, counts, and the
fixed "observed" facts such as a row count or column names), with every value list empty, and then
rendered by GX's ``ValidationResultsPageRenderer`` and ``DefaultJinjaPageView``.

The report goes to the run's private folder for operators, outside the staging folder (which is
removed after every run) and never into the package:
``$CONTRACT_EXTRACTS_HOME/reports/<contract>/<delivery>/`` (folders 0700, files 0600), with an
``index.html`` linking one page per dataset, plus ``validation.json`` and ``disclosure.json``.

Every page is self-contained: GX's page template is replaced by ``report_templates/page.j2`` (an inline
stylesheet, no CDN CSS or scripts, no logo, no links to GX's site), any external reference that remains is
removed (``self_contained``), and a Content-Security-Policy meta tag forbids the browser to fetch anything, so
the report looks the same offline and opening it makes no request. The Airflow UI links it from the run's tab.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import ChoiceLoader, FileSystemLoader

from core.errors import ConfigError, value_free
from core.paths import make_private_dir, safe_segment
from disclosure.report import risk_report_html
from validation.gx_adapter import import_gx
from validation.model import ExpectationOutcome, ValidationSummary

if TYPE_CHECKING:
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult

log = logging.getLogger(__name__)

REPORT_INDEX = "index.html"
DISCLOSURE_DOCUMENT = "disclosure.json"
_TEMPLATES = Path(__file__).with_name("report_templates")
# What the browser may do with a report page: show it with its inline styles, nothing else.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
_SCRIPT = re.compile(r"<script\b.*?</script\s*>", re.IGNORECASE | re.DOTALL)
_LINK_TAG = re.compile(r"<link\b[^>]*>", re.IGNORECASE)
_EXTERNAL_IMG = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^>]*>", re.IGNORECASE)
# Links to other sites, and GX's links up out of the report folder (to suites and pages that do not exist).
_EXTERNAL_HREF = re.compile(r"\bhref\s*=\s*([\"'])(?:(?:https?:)?//|\.\./)[^\"']*\1", re.IGNORECASE)
_EXTERNAL_URL = re.compile(r"url\(\s*[\"']?(?:https?:)?//[^)]*\)", re.IGNORECASE)


def self_contained(page: str) -> str:
    """``page`` without scripts, stylesheet links, external images, links or CSS URLs (defence behind page.j2)."""
    page = _SCRIPT.sub("", page)
    page = _LINK_TAG.sub("", page)
    page = _EXTERNAL_IMG.sub("", page)
    page = _EXTERNAL_HREF.sub("", page)
    return _EXTERNAL_URL.sub("none", page)


def existing_report(home: Path, contract: str, delivery: str) -> Path | None:
    """The report folder of a delivery when it holds a report index page (never creates anything)."""
    try:
        folder = home / "reports" / safe_segment(contract, "contract id") / safe_segment(delivery, "delivery id")
    except ConfigError:
        return None
    return folder if (folder / REPORT_INDEX).is_file() else None


def report_dir(home: Path, contract: str, delivery: str) -> Path:
    """``<home>/reports/<contract>/<delivery>``, every level created 0700."""
    path = home / "reports"
    for part in (safe_segment(contract, "contract id"), safe_segment(delivery, "delivery id")):
        make_private_dir(path)
        path = path / part
    return make_private_dir(path)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _result(outcome: ExpectationOutcome, rows: int) -> dict[str, Any]:
    if outcome.unexpected_count is not None and outcome.column is not None:
        percent = 100.0 * outcome.unexpected_count / rows if rows else 0.0
        return {"element_count": rows, "unexpected_count": outcome.unexpected_count,
                "unexpected_percent": percent, "unexpected_percent_nonmissing": percent,
                "partial_unexpected_list": [], "missing_count": None}
    return {"observed_value": outcome.observed if outcome.observed is not None else
            ("passed" if outcome.success else "failed")}


def _suite_result(summary: ValidationSummary, contract: str, delivery: str) -> ExpectationSuiteValidationResult:
    from great_expectations.core.expectation_validation_result import (  # noqa: PLC0415 - deferred: importing GX takes ~3 s
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.expectations.expectation_configuration import (  # noqa: PLC0415 - deferred: importing GX takes ~3 s
        ExpectationConfiguration,
    )

    results = []
    for outcome in summary.expectations:
        config = outcome.config
        if config is None:
            kwargs = {"column": outcome.column} if outcome.column else {}
            config = ExpectationConfiguration(type=outcome.expectation, kwargs=kwargs)
        results.append(ExpectationValidationResult(success=outcome.success, expectation_config=config,
                                                   result=_result(outcome, summary.rows)))
    evaluated = len(results)
    passed = sum(1 for r in results if r.success)
    return ExpectationSuiteValidationResult(
        success=summary.success, results=results, suite_name=f"{contract}.{summary.dataset}",
        statistics={"evaluated_expectations": evaluated, "successful_expectations": passed,
                    "unsuccessful_expectations": evaluated - passed,
                    "success_percent": 100.0 * passed / evaluated if evaluated else 100.0},
        meta={"contract": contract, "delivery": delivery, "dataset": summary.dataset})


def _page_name(dataset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset).strip("_") or "delivery"


def render_report(folder: Path, summaries: list[ValidationSummary], *, contract: str, delivery: str,
                  documents: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the report into ``folder`` (see the module docstring); returns the index page."""
    import_gx()
    from great_expectations.render.renderer.page_renderer import (  # noqa: PLC0415 - deferred: importing GX takes ~3 s
        ValidationResultsPageRenderer,
    )
    from great_expectations.render.view.view import DefaultJinjaPageView  # noqa: PLC0415 - deferred: importing GX takes ~3 s

    renderer = ValidationResultsPageRenderer()
    view = DefaultJinjaPageView()
    # Our page, sidebar and stylesheet first, GX's templates for everything else (sections, tables, content).
    gx_templates = view.env.loader
    view.env.loader = ChoiceLoader([FileSystemLoader(str(_TEMPLATES)), *([gx_templates] if gx_templates else [])])
    links = []
    for summary in summaries:
        name = f"{_page_name(summary.dataset)}.html"
        page: str = view.render(renderer.render(_suite_result(summary, contract, delivery)))  # type: ignore[no-untyped-call]  # GX leaves render() unannotated
        _write_private(folder / name, self_contained(page))
        links.append((summary, name))
    write_documents(folder, documents or {})
    rows = "".join(
        f"<tr><td><a href=\"{html.escape(name)}\">{html.escape(s.dataset)}</a></td>"
        f"<td>{'passed' if s.success else 'FAILED'}</td><td>{len(s.expectations)}</td>"
        f"<td>{len(s.failures())}</td><td>{html.escape(', '.join(sorted({f.expectation for f in s.failures()})))}"
        "</td></tr>" for s, name in links)
    extra = "".join(f"<li><a href=\"{html.escape(n)}\">{html.escape(n)}</a></li>" for n in (documents or {}))
    risk = risk_report_html((documents or {})[DISCLOSURE_DOCUMENT]) if DISCLOSURE_DOCUMENT in (documents or {}) else ""
    index = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{REPORT_CSP}\">"
        "<meta name=\"referrer\" content=\"no-referrer\"><title>Validation report "
        f"{html.escape(contract)} {html.escape(delivery)}</title>"
        f"<style>{(_TEMPLATES / 'offline_report.css').read_text(encoding='utf-8')}</style></head>"
        "<body><div class=\"report\"><main>"
        f"<h1>Release gate: {html.escape(contract)}, delivery {html.escape(delivery)}</h1>"
        f"<p>Overall: {'passed' if all(s.success for s in summaries) else 'FAILED'}. Counts, column names and "
        "thresholds only: no data values.</p>"
        "<table border=\"1\" cellpadding=\"4\"><tr><th>Dataset</th><th>Result</th><th>Expectations</th>"
        f"<th>Failed</th><th>Failing expectations</th></tr>{rows}</table>"
        + risk + (f"<h2>Summaries</h2><ul>{extra}</ul>" if extra else "") + "</main></div></body></html>")
    index_path = folder / REPORT_INDEX
    _write_private(index_path, index)
    return index_path


def _page(title: str, body: str) -> str:
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{REPORT_CSP}\">"
            f"<meta name=\"referrer\" content=\"no-referrer\"><title>{html.escape(title)}</title>"
            f"<style>{(_TEMPLATES / 'offline_report.css').read_text(encoding='utf-8')}</style></head>"
            f"<body><div class=\"report\"><main>{body}</main></div></body></html>")


def write_documents(folder: Path, documents: dict[str, dict[str, Any]]) -> None:
    """Value-free JSON documents (e.g. a blocked disclosure report) into the report folder, 0600."""
    for file_name, document in documents.items():
        _write_private(folder / _page_name(file_name), json.dumps(document, indent=2, sort_keys=True))
    if DISCLOSURE_DOCUMENT in documents:  # the same risk report as the index page, readable without one
        _write_private(folder / "risk.html", _page("Disclosure risk", risk_report_html(documents[DISCLOSURE_DOCUMENT])))


def operator_report(home: Path, contract: str, delivery: str, documents: dict[str, dict[str, Any]],
                    summaries: list[ValidationSummary] | None = None) -> Path | None:
    """Write the run's operator report (pages when ``summaries`` are given, else just ``documents``).

    Returns the index page (or the folder); the report is for people and never decides a delivery, so a
    failure to write it is logged (exception type only) and ``None`` returned.
    """
    try:
        folder = report_dir(home, contract, delivery)
        if summaries is None:
            write_documents(folder, documents)
            log.info("disclosure report for operators: %s", folder)
            return folder
        index = render_report(folder, summaries, contract=contract, delivery=delivery, documents=documents)
    except Exception as exc:
        log.error("could not write the operator report for delivery %s: %s", delivery, value_free(exc))
        return None
    log.info("validation report for operators: %s", index)
    return index
