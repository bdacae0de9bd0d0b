"""Hostname callable for Airflow (``[core] hostname_callable``) that lets one machine run several workers.

Airflow records the host of every task instance from this callable. On Kubernetes or separate hosts the
default (the FQDN) is right; when two Celery workers share one machine (deploy/celery-local.sh) each gets
``CONTRACT_EXTRACTS_WORKER_NAME`` so task instances show which worker ran them::

    AIRFLOW__CORE__HOSTNAME_CALLABLE=airflow_glue.hostname.worker_hostname
"""

from __future__ import annotations

import os
import re
import socket

WORKER_NAME_ENV = "CONTRACT_EXTRACTS_WORKER_NAME"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


def worker_hostname() -> str:
    name = os.environ.get(WORKER_NAME_ENV, "").strip()
    if name and _SAFE.match(name):
        return name
    return socket.getfqdn()
