"""`contract-extracts run` shows its progress: a tqdm bar per dataset on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence

import pytest
import sqlalchemy as sa

from cli.progress import TerminalProgress
from demo.synthetic import write_demo_source
from masking.progress import ProgressUpdate, RowProgress, listening
from tests.authorisation.helpers import approve_for_tests
from tests.conftest import Workspace, airflow_uri, temporary_database


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_each_dataset_gets_a_bar_with_rate_share_and_eta() -> None:
    terminal = FakeTerminal()
    display = TerminalProgress(terminal)
    assert display.bars
    clock = iter(float(i) for i in range(100)).__next__
    with listening(display):
        progress = RowProgress("claimants", estimate=4_000, clock=clock)
        for _ in range(3):
            progress.add(1_000)
        progress.finish()
    out = terminal.getvalue()
    assert "claimants" in out and "/4.00k" in out and "rows/s" in out, out
    assert re.search(r"\b75%", out) and "<" in out  # tqdm's "elapsed<remaining"
    assert display._bars == {}  # closed when done


def test_elsewhere_plain_lines_every_interval_and_when_done() -> None:
    pipe = io.StringIO()
    now = [0.0]
    display = TerminalProgress(pipe, every=10.0, clock=lambda: now[0])
    assert not display.bars
    for rows, at in ((1_000, 1.0), (2_000, 5.0), (3_000, 12.0)):
        now[0] = at
        display(ProgressUpdate("claimants", "extract", rows, at, None))
    display(ProgressUpdate("claimants", "extract", 3_500, 13.0, None, done=True))
    lines = pipe.getvalue().splitlines()
    assert [re.match(r"dataset claimants: ([\d,]+) rows", line)[1] for line in lines] == ["1,000", "3,000", "3,500"]
    assert lines[-1].endswith("done") and "\r" not in pipe.getvalue()


@pytest.mark.integration
def test_a_run_from_the_command_line_prints_progress_with_share_done(
        workspace: Workspace, cli_main: Callable[[Sequence[str] | None], int], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real delivery of C-DEMO-002 from PostgreSQL (statistics analysed): stderr, not a terminal here, gets one
    plain line per dataset pass with the share of the source's estimate; nothing was printed before this."""
    with temporary_database("postgresql") as url:
        write_demo_source(url, n_people=600)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        engine.dispose()
        monkeypatch.setenv("AIRFLOW_CONN_DEMO_CLAIMS", airflow_uri(url).replace("postgresql://", "postgresql+psycopg://"))
        path = workspace.contracts_dir / "C-DEMO-002.yaml"
        approve_for_tests(workspace.config_dir, workspace.home, [path])
        assert cli_main(["run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "delivered C-DEMO-002_" in out
    done = [line for line in err.splitlines() if line.startswith("dataset claimants") and line.endswith("done")]
    assert done, err
    assert re.search(r"dataset claimants: [\d,]+ of ~[\d,]+ rows \(\d+%\), [\d,]+ rows/s, [\d.]+ s elapsed, done",
                     done[-1]), done
