"""What a sweep's results mean, computed from trial records alone: records, Pareto fronts, recommendations
and the confirmation plan. Pure: imports neither Ray nor MLflow nor torch."""
