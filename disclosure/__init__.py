"""Statistical disclosure control: re-identification risk of microdata, its treatment, safe aggregate tables.

Pure and framework-free (pyarrow and numpy; no Airflow, no Great Expectations). docs/disclosure.md
describes the measures, the treatment and the table rules.
"""

from disclosure.assess import ledger_details, run_disclosure, sample_fraction, sample_info
from disclosure.report import codebook_lines, column_notes, manifest_section, package_files
from disclosure.result import FORMAT, DisclosureResult
from disclosure.risk import Classes, Measures, build_classes, measure
from disclosure.tables import build_table, build_tables
from disclosure.treatment import DisclosureBlocked, apply_plan, plan_treatment

__all__ = [
    "FORMAT",
    "Classes",
    "DisclosureBlocked",
    "DisclosureResult",
    "Measures",
    "apply_plan",
    "build_classes",
    "build_table",
    "build_tables",
    "codebook_lines",
    "column_notes",
    "ledger_details",
    "manifest_section",
    "measure",
    "package_files",
    "plan_treatment",
    "run_disclosure",
    "sample_fraction",
    "sample_info",
]
