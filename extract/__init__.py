"""Extract: contract → query from the allow-list only; source → Arrow record batches.

``sources`` plans and streams the queries (the fastest exact route per database), ``consistent_read``
gives every read of a delivery one view of the source, ``partitioning`` splits large tables into key
ranges, ``incremental`` narrows them to a window, and ``result`` is what the stage hands on.
"""
