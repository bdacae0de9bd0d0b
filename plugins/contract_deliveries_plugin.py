"""Airflow plugin: the "Contract deliveries" page in the Airflow UI (Airflow 3.1+ plugin interface).

Thin on purpose: the pages live in ``airflow_glue.ui``. The API server mounts the
FastAPI app at /contract-deliveries; ``external_views`` add a navigation entry (shown in an iframe at
/plugin/contract-deliveries), a tab on every contract DAG and a tab on every DAG run. Every route
requires an Airflow login. Restart the API server after changing this file.
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from airflow_glue.ui import URL_PREFIX, create_app


class ContractDeliveriesPlugin(AirflowPlugin):
    name = "contract_deliveries"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Contract deliveries"},
    ]
    external_views: ClassVar[list[dict[str, str]]] = [
        {"name": "Contract deliveries", "href": f"{URL_PREFIX}/", "url_route": "contract-deliveries",
         "destination": "nav", "category": "browse"},
        {"name": "Contract", "href": f"{URL_PREFIX}/dags/{{DAG_ID}}", "url_route": "contract-of-dag",
         "destination": "dag"},
        {"name": "Delivery record", "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
         "url_route": "contract-delivery-run", "destination": "dag_run"},
    ]
