"""What a finished sweep leaves behind: tables, recommended specs and the report on the parent run
(``publish.py``), and the recommended model, truncated and factorized (``export.py``)."""
