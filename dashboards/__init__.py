"""dashboards: reports and plots of q3r-tune sweeps, read back from MLflow (they never train).

May import the layers below it (tuning.analysis, tuning.tracking and those under them), plotly and
matplotlib; never Ray, Optuna or the sweep machinery above it (tuning.artifacts, tuning.sweep, tuning.cli).
"""
