"""One DAG per valid contract file in $CONTRACT_EXTRACTS_CONFIG_DIR/contracts (default: ../configs).

Kept thin on purpose: all logic lives in the stage packages and plugins/airflow_glue.
"""

import os
from pathlib import Path

from airflow_glue.builder import build_all

_CONFIG_DIR = Path(os.environ.get("CONTRACT_EXTRACTS_CONFIG_DIR") or Path(__file__).parent.parent / "configs")

globals().update(build_all(_CONFIG_DIR / "contracts"))
