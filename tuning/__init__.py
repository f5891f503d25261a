"""tuning: sweeps of one-trial runs (``tuning.trial``) with Ray Tune, ASHA, Optuna and MLflow, scored
fronts and recommendations, and the ``q3r-tune`` CLI. Imports q3r and tuning.trial; never dashboards
(except the CLI's report commands and the report published at a sweep's end, imported when called).
"""
