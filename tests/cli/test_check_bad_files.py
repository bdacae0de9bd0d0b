"""`contract-extracts check` on files that do not load: one clear line per file, never a traceback, exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CLI = str(Path(sys.executable).parent / "contract-extracts")


def test_check_names_every_bad_file_without_a_traceback(tmp_path: Path) -> None:
    good = (REPO / "configs" / "contracts" / "C-DEMO-002.yaml").read_text()
    files = {
        "C-BAD-001.yaml": good.replace("C-DEMO-002", "C-BAD-001").replace("from: 2026-01-01", "from: 2026-13-01"),
        "C-BAD-002.yaml": "contract: C-BAD-002\ntitle: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n",
        "C-BAD-003.yaml": "contract: C-BAD-003\nvalid: {until: 2030-02-31}\n",
        "C-BAD-004.yaml": "contract: C-BAD-004\n? [a]\n: 1\n",
    }
    paths = []
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    proc = subprocess.run([CLI, "check", *paths, str(REPO / "configs" / "contracts" / "C-DEMO-002.yaml")],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout and "Error:" not in proc.stderr
    assert "ok  " in proc.stdout and "C-DEMO-002.yaml" in proc.stdout  # the good file is still checked
    for name, fragment in (("C-BAD-001.yaml", "valid.from"), ("C-BAD-002.yaml", "nested more than 32 levels"),
                           ("C-BAD-003.yaml", "valid.until"), ("C-BAD-004.yaml", "plain name")):
        line = next(x for x in proc.stderr.splitlines() if name in x and "Fix:" in x)
        assert fragment in line, line
    assert "4 of 5 file(s) have problems" in proc.stderr
