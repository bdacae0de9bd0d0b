"""Extract: contract → query from the allow-list only; source → Arrow record batches."""
