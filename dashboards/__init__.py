"""dashboards: reports and plots of q3r-tune sweeps, read back from MLflow (they never train).

May import tuning's result types (records, pareto, recommend, tracking), plotly and matplotlib.
"""
