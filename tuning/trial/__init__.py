"""tuning.trial: one trial of q3r-tune, in layers: spec -> data, models -> techniques -> recipe -> evaluation.

May import q3r, torch, timm, transformers, peft, scikit-learn, pydantic and yaml; never Ray,
Optuna, MLflow or the sweep layer (``tuning`` outside this package).
"""
