"""Airflow glue: with dags/, the only code that imports Airflow (DAG builder, alerts, key sources, SFTP, UI)."""
