"""Failure alerts: contract, stage and reason from the ledger, never a data value; e-mail through the SMTP provider."""

from __future__ import annotations

import datetime as dt
import email
import json
import socketserver
import threading
from types import SimpleNamespace

import pytest

from airflow_glue import alerts
from audit.ledger import Ledger
from core.settings import load_settings
from pipeline.stages import delivery_id_for
from tests.conftest import Workspace

SECRET_VALUE = "QQ123456C"  # stands for a data value that must never reach an alert
RUN_AFTER = dt.datetime(2026, 11, 25, 1, 2, 3, tzinfo=dt.UTC)


def context(task_id: str = "extract", exc: BaseException | None = None) -> dict:
    dag_run = SimpleNamespace(dag_id="contract_c_demo_001", run_id="manual__1", run_after=RUN_AFTER)
    ti = SimpleNamespace(task_id=task_id, try_number=3, dag_id="contract_c_demo_001", run_id="manual__1")
    return {"dag_run": dag_run, "ti": ti, "exception": exc or RuntimeError(f"row with nino {SECRET_VALUE}")}


def _delivery() -> str:
    return delivery_id_for("contract_c_demo_001/manual__1", RUN_AFTER)


def test_reason_comes_from_the_ledger_and_never_from_the_exception(workspace: Workspace) -> None:
    with Ledger(load_settings().ledger_url) as ledger:
        ledger.append(actor="airflow", action="blocked", contract="C-DEMO-001", delivery=_delivery(),
                      details={"stage": "extract", "reason": "extract failed: OperationalError", "final": True})
    alert = alerts.build_alert(context(), "C-DEMO-001")
    assert (alert.contract, alert.stage, alert.delivery) == ("C-DEMO-001", "extract", _delivery())
    assert alert.reason == "extract failed: OperationalError"
    for text in (alert.subject, alert.text(), alert.html()):
        assert SECRET_VALUE not in text


def test_without_a_ledger_record_only_the_exception_type_is_named(workspace: Workspace) -> None:
    alert = alerts.build_alert(context(task_id="package"), "C-DEMO-001")
    assert alert.reason.startswith("RuntimeError") and SECRET_VALUE not in alert.text()


def test_notify_logs_and_never_raises(workspace: Workspace, caplog: pytest.LogCaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTRACT_EXTRACTS_LEDGER_URL", "not a url")
    monkeypatch.delenv(alerts.ALERT_EMAIL_ENV, raising=False)
    with caplog.at_level("ERROR", logger="airflow_glue.alerts"):
        alert = alerts.notify_failure(context(), "C-DEMO-001")
    assert alert is not None and "ALERT contract C-DEMO-001" in caplog.text and "stage extract" in caplog.text
    assert SECRET_VALUE not in caplog.text


class _SMTPHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        received = self.server.received  # type: ignore[attr-defined]
        self.wfile.write(b"220 test ESMTP\r\n")
        while line := self.rfile.readline():
            command = line.decode(errors="replace").strip().upper()
            if command.startswith(("EHLO", "HELO")):
                self.wfile.write(b"250 test\r\n")
            elif command == "DATA":
                self.wfile.write(b"354 go ahead\r\n")
                body = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    body.append(data.decode(errors="replace"))
                received.append("".join(body))
                self.wfile.write(b"250 queued\r\n")
            elif command == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_alert_is_emailed_through_the_smtp_provider(workspace: Workspace, smtp_server,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    port = smtp_server.server_address[1]
    extra = json.dumps({"from_email": "airflow@example.org", "disable_tls": True, "disable_ssl": True,
                        "retry_limit": 0, "timeout": 10})
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({"conn_type": "smtp", "host": "127.0.0.1",
                                                                "port": port, "extra": extra}))
    monkeypatch.setenv(alerts.ALERT_EMAIL_ENV, "ops@example.org, not-an-address")
    monkeypatch.setenv(alerts.ALERT_SMTP_CONN_ENV, "smtp_alerts")
    with Ledger(load_settings().ledger_url) as ledger:
        ledger.append(actor="airflow", action="blocked", contract="C-DEMO-001", delivery=_delivery(),
                      details={"stage": "validate", "reason": "validation failed, nothing is packaged", "final": True})
    alerts.notify_failure(context(task_id="validate"), "C-DEMO-001")
    (raw,) = smtp_server.received
    message = email.message_from_string(raw)
    assert message["Subject"] == "[contract-extracts] C-DEMO-001: validate failed"
    assert message["To"] == "ops@example.org"
    body = "".join(part.get_payload(decode=True).decode() for part in message.walk() if not part.is_multipart())
    for text in ("C-DEMO-001", "validate", "validation failed, nothing is packaged", _delivery()):
        assert text in body, text
    assert SECRET_VALUE not in raw and SECRET_VALUE not in body


def test_failure_callback_is_bound_to_its_contract() -> None:
    callback = alerts.failure_callback("C-DEMO-002")
    assert callback.__name__ == "alert_C_DEMO_002" and callable(callback)
