"""The "Contract deliveries" pages: a FastAPI app that Airflow's API server mounts through our plugin.

Every route requires an Airflow login (``GetUserDep``: the JWT cookie the Airflow UI sets, or a bearer
token); an anonymous request gets 401. A contract is listed only when the user may read its DAG
(the auth manager decides). Pages are rendered on the server with Jinja2, autoescaped, with no
script and nothing loaded from outside. They show metadata only (see ``overview.py``).

Mounted at ``/contract-deliveries``:
    /                          overview: contracts, recent deliveries, blocked runs, ledger status
    /contracts/{contract}      one contract: attributes, treatments, approvals, deliveries
    /dags/{dag_id}             the contract of a DAG (the plugin's per-DAG tab)
    /runs/{dag_id}/{run_id}    the ledger records of one DAG run (the plugin's per-run tab), with its report
    /reports/{contract}/{delivery}/{file}   the run's release-gate report (validation.operator_report): served
                               with a policy that lets the browser fetch nothing, as the pages need nothing
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, get_user
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from airflow_glue import overview as ov
from contracts.base import CONTRACT_ID
from contracts.model import dag_id_for
from core.errors import value_free
from core.settings import load_settings
from validation.operator_report import REPORT_CSP, existing_report

log = logging.getLogger(__name__)

URL_PREFIX = "/contract-deliveries"
_TEMPLATES = Path(__file__).with_name("templates")
_DAG_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")
_CONTRACT_ID = re.compile(CONTRACT_ID)
_SECURITY_HEADERS = {
    # Same-origin framing only (the Airflow UI shows the page in an iframe); nothing loads from elsewhere.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# The release-gate report: its pages may not even be framed by anything but the Airflow UI.
_REPORT_HEADERS = {**_SECURITY_HEADERS, "Content-Security-Policy": REPORT_CSP + "; frame-ancestors 'self'"}
_REPORT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}\.(html|json)$")
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")

Authorize = Callable[[Any, str], bool]


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(_TEMPLATES)), autoescape=select_autoescape(default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = ov.short_time
    env.filters["short"] = lambda h, n=12: (str(h)[:n] + "…") if h and len(str(h)) > n else (h or "")
    env.filters["summary"] = ov.summarise_details
    env.filters["thousands"] = lambda n: "" if n is None else f"{int(n):,}"
    env.globals["treatment_text"] = ov.treatment_text
    return env


def airflow_can_read_dag(user: Any, dag_id: str) -> bool:
    """Ask Airflow's auth manager whether ``user`` may read the DAG (fail closed on any error)."""
    try:
        # The API server's app module: heavy, and needed when a page is served, not when plugins load.
        from airflow.api_fastapi.app import get_auth_manager  # noqa: PLC0415 - deferred: not at plugin load

        return bool(get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=dag_id), user=user))
    except Exception as exc:
        log.warning("authorisation check for DAG %s failed (%s); hiding it", dag_id, value_free(exc))
        return False


def create_app(*, authorize: Authorize | None = None, source: ov.LedgerSource | None = None) -> FastAPI:
    """The app the plugin mounts. ``authorize`` defaults to Airflow's auth manager (tests may swap it)."""
    authorize = authorize or airflow_can_read_dag
    source = source or ov.LedgerSource()
    templates = _environment()

    # Authentication for every route at app level (nothing can be added later without it), and no
    # unauthenticated OpenAPI/docs routes.
    app = FastAPI(title="Contract deliveries", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(get_user)])
    app.state.ledger_source = source

    def page(request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        html = templates.get_template(template).render(base=base, now=ov.short_time(
            dt.datetime.now(dt.UTC).isoformat()), **values)
        return HTMLResponse(html, status_code=status_code, headers=_SECURITY_HEADERS)

    def not_found(request: Request, what: str) -> HTMLResponse:
        return page(request, "message.html.j2", status_code=404, title="Not found", message=what)

    @app.get("/", response_class=HTMLResponse)
    def overview_page(request: Request, user: GetUserDep) -> HTMLResponse:
        settings = load_settings()
        data = ov.build_overview(settings.contracts_dir, settings.ledger_url, source,
                                 visible=lambda c: authorize(user, c.dag_id))
        return page(request, "overview.html.j2", title="Contract deliveries", o=data)

    @app.get("/contracts/{contract_id}", response_class=HTMLResponse)
    def contract_page(contract_id: str, request: Request, user: GetUserDep) -> HTMLResponse:
        if not _CONTRACT_ID.match(contract_id):
            return not_found(request, "No such contract.")
        settings = load_settings()
        detail = ov.build_contract_detail(contract_id, settings.contracts_dir, settings.ledger_url, source)
        if detail is None or not authorize(user, detail.row.contract.dag_id):
            return not_found(request, "No such contract, or you may not read its DAG.")
        return page(request, "contract.html.j2", title=f"Contract {contract_id}", d=detail)

    @app.get("/dags/{dag_id}", response_class=HTMLResponse)
    def dag_page(dag_id: str, request: Request, user: GetUserDep) -> HTMLResponse:
        if not _DAG_ID.match(dag_id):
            return not_found(request, "No such DAG.")
        settings = load_settings()
        contract_id = ov.contract_for_dag(dag_id, settings.contracts_dir)
        if contract_id is None:
            return page(request, "message.html.j2", title="Not a contract DAG",
                        message="This DAG does not deliver a contract extract.")
        return contract_page(contract_id, request, user)

    @app.get("/runs/{dag_id}/{run_id:path}", response_class=HTMLResponse)
    def run_page(dag_id: str, run_id: str, request: Request, user: GetUserDep) -> HTMLResponse:
        if not _DAG_ID.match(dag_id) or not run_id or len(run_id) > 250:
            return not_found(request, "No such run.")
        if not authorize(user, dag_id):
            return not_found(request, "No such run, or you may not read its DAG.")
        settings = load_settings()
        detail = ov.build_run_detail(dag_id, run_id, settings.ledger_url, source, home=settings.home)
        return page(request, "run.html.j2", title=f"Delivery record of {run_id}", r=detail)

    @app.get("/reports/{contract_id}/{delivery}/{name}")
    def report_file(contract_id: str, delivery: str, name: str, request: Request, user: GetUserDep) -> Response:
        if not (_CONTRACT_ID.match(contract_id) and _DELIVERY_ID.match(delivery) and _REPORT_FILE.match(name)) \
                or ".." in delivery or ".." in name:
            return not_found(request, "No such report.")
        if not authorize(user, dag_id_for(contract_id)):
            return not_found(request, "No such report, or you may not read its DAG.")
        folder = existing_report(load_settings().home, contract_id, delivery)
        # Only a file that is really in the report folder (listed, never a path built from the request).
        found = next((f for f in folder.iterdir() if f.name == name and f.is_file()), None) if folder else None
        if found is None:
            return not_found(request, "No such report.")
        media = "text/html; charset=utf-8" if name.endswith(".html") else "application/json"
        return Response(found.read_bytes(), media_type=media, headers=_REPORT_HEADERS)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> HTMLResponse:
        if exc.status_code in (401, 403):
            html = ("<!doctype html><title>Sign in required</title><p>Sign in to Airflow to see contract "
                    "deliveries.</p>")
            return HTMLResponse(html, status_code=exc.status_code, headers=_SECURITY_HEADERS)
        return HTMLResponse(f"<!doctype html><title>Error</title><p>Error {exc.status_code}</p>",
                            status_code=exc.status_code, headers=_SECURITY_HEADERS)

    return app
