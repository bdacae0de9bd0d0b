"""Nightly: a signed checkpoint of the audit ledger, written to a second store (airflow_glue.audit)."""

from airflow_glue.audit import DAG_ID, build_checkpoint_dag

globals()[DAG_ID] = build_checkpoint_dag()
