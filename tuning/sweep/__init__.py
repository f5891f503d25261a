"""The Ray side of a sweep: the driver that runs search, resume and confirmation (``driver.py``), one trial
in Ray (``trainable.py``), the Optuna searcher and the per-technique ASHA scheduler."""
