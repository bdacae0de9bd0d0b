"""Contract data extracts: minimum data, inconsistent keyed masking, validated encrypted delivery.

Stage packages (contracts, extract, masking, validation, delivery, audit, pipeline) are plain
Python and never import Airflow; only ``airflow_glue`` (and the ``dags/`` folder) do.
"""

__version__ = "0.1.0"
