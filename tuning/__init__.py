"""q3r-tune orchestration: sweeps over Q3R hyperparameters (Ray Tune, Optuna, MLflow)."""
