"""Airflow side of the SFTP transport: an Airflow connection id → ``delivery.sftp.SFTPEndpoint``.

The connection is read through the SFTP provider's hook (``SFTPHook``), so it comes from wherever
Airflow keeps connections (metadata DB, ``AIRFLOW_CONN_*``, a secrets backend) and is checked the way the
provider checks it (host, key options, ``host_key`` parsing). The session itself is opened by
``delivery.sftp.connect`` with the same strict rules as outside Airflow: only the pinned host key is
accepted. The hook's own ``get_conn`` is not used for the upload because it also trusts the worker's
``~/.ssh/known_hosts`` ahead of the pinned key, retries authentication and host key failures, and
can be told to auto-accept keys (``no_host_key_check``), which deliveries must never do.

Pass ``airflow_sftp_endpoint`` as ``RunContext.resolve_sftp`` (the DAG builder does).
"""

from __future__ import annotations

from core.errors import ConfigError, value_free
from core.settings import load_settings
from delivery.sftp import SFTPEndpoint, endpoint_from_connection


def airflow_sftp_endpoint(conn_id: str) -> SFTPEndpoint:
    from airflow.providers.sftp.hooks.sftp import SFTPHook  # noqa: PLC0415 - deferred: SFTP runs only, not DAG parse

    key = f"connection {conn_id!r}"
    try:
        hook = SFTPHook(ssh_conn_id=conn_id, conn_retry_attempts=1)
        conn = hook.get_connection(conn_id)
    except ValueError as exc:  # the provider's own checks (host key format, conflicting options)
        raise ConfigError(f"is not a usable SFTP connection ({str(exc)[:200]})", key=key,
                          fix="correct the connection's extras") from None
    except Exception as exc:
        raise ConfigError(f"is not defined in Airflow or cannot be read ({value_free(exc)})", key=key,
                          fix=f"add the SFTP connection {conn_id!r} (UI, CLI, AIRFLOW_CONN_..., secrets "
                              "backend)") from None
    if hook.no_host_key_check or hook.allow_host_key_change:
        raise ConfigError("turns host key checking off", key=key,
                          fix="remove no_host_key_check / allow_host_key_change and pin the server's key")
    return endpoint_from_connection(conn_id, conn_type=conn.conn_type, host=conn.host, port=conn.port,
                                    login=conn.login, password=conn.password, extra=conn.extra_dejson,
                                    config_dir=load_settings().config_dir)
