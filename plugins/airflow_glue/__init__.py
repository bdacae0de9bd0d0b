"""Airflow glue: the only part of the package that imports Airflow (the DAG builder)."""
