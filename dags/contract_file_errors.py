"""Shows every contract file that does not load as an Airflow import error naming file, key and fix.

Separate from contract_deliveries.py so that one broken contract never hides the other contracts' DAGs.
This file defines no DAG when every contract is valid.
"""

import os
from pathlib import Path

from airflow_glue.builder import InvalidContractFiles, broken_contracts

_CONFIG_DIR = Path(os.environ.get("CONTRACT_EXTRACTS_CONFIG_DIR") or Path(__file__).parent.parent / "configs")

_problems = broken_contracts(_CONFIG_DIR / "contracts")
if _problems:
    raise InvalidContractFiles("invalid contract file(s), no DAG was built for them:\n" + "\n".join(_problems))
