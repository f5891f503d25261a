"""q3r: the Quadratic Reweighted Rank Regularizer (Q3R), AdamQ3R and SVD truncation, in PyTorch.

The library alone: it imports torch and nothing else of q3r-tune's stack (no timm, transformers,
peft, scikit-learn, Ray, Optuna or MLflow). Ghosh, Nguyen, Kuemmerle, NeurIPS 2025, arXiv 2511.04485.
"""
from .adamq3r import AdamQ3R
from .bank import OperatorBank
from .delta import DeltaSpectra
from .diagnostics import diagnostics, flatten
from .functional import effective_rank, q3r_value, reweight, tail_ratio
from .operator import ReweightingOperator
from .penalty import Q3RPenalty
from .ranks import resolve_rank, target_rank
from .schedules import GeometricEps, LinearEps, PaperEps, WarmupEps, make_schedule
from .targets import Target, select_targets
from .lowrank_io import load_lowrank, save_lowrank
from .truncation import LowRankLinear, SpectralCache, parameter_counts, retained_rank, truncate

__all__ = [
    "AdamQ3R", "Q3RPenalty", "ReweightingOperator", "OperatorBank", "Target", "select_targets",
    "target_rank", "resolve_rank", "truncate", "SpectralCache", "LowRankLinear", "parameter_counts",
    "retained_rank", "DeltaSpectra", "diagnostics", "flatten", "reweight", "q3r_value", "effective_rank", "tail_ratio",
    "PaperEps", "GeometricEps", "LinearEps", "WarmupEps", "make_schedule", "save_lowrank", "load_lowrank",
]
__version__ = "0.1.0"
