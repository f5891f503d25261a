"""Colours, markers and labels shared by the interactive (plotly) and static (matplotlib) figures."""
from __future__ import annotations

from tuning.trial.metrics import DEFAULT_METRIC, Metric
from tuning.trial.registry import list_techniques

# The registered techniques keep their colour in every sweep; others take the remaining ones in turn.
PALETTE = ("#1f77b4", "#d62728", "#7f7f7f", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22")
KNOWN = tuple(list_techniques())

# status -> (plotly symbol, matplotlib marker)
STATUS_MARKERS = {"completed": ("circle", "o"), "stopped": ("x", "x"), "running": ("diamond-open", "D"),
                  "diverged": ("triangle-down", "v"), "collapsed": ("triangle-down-open", "v"),
                  "failed": ("square-open", "s")}

TITLES = {
    "pareto": "Accuracy against parameters after truncation",
    "retention": "Accuracy against retention, best configuration of each technique",
    "sensitivity": "Sensitivity of the objective to each hyperparameter",
    "progress": "ASHA progress: objective against epoch",
    "recommendations": "Recommended configuration by budget",
}
AXES = {
    "parameters": "parameters stored after truncation (whole model; min(rank, r(p)) factor columns per matrix)",
    "accuracy": "validation accuracy",
    "retention": "retention p (fraction of each matrix's parameters kept)",
    "objective": "objective",
    "epoch": "epoch",
}
NO_FINISHED = "no finished trial yet"


def axis(name: str, metric: Metric = DEFAULT_METRIC) -> str:
    """The label of axis ``name`` (a key of AXES); the metric's axes are named after the sweep's metric."""
    if metric == DEFAULT_METRIC or name not in ("accuracy", "objective"):
        return AXES[name]
    return f"validation {metric.label}" if name == "accuracy" else f"objective ({metric.label})"


def title(name: str, metric: Metric = DEFAULT_METRIC) -> str:
    """The title of figure ``name`` (a key of TITLES), naming the sweep's metric."""
    if metric == DEFAULT_METRIC:
        return TITLES[name]
    text = TITLES[name].replace("Accuracy", metric.name.capitalize())
    return text.replace("objective", f"objective ({metric.direction})") if "objective" in text else text


def colour(technique: str, techniques=()) -> str:
    """The technique's colour: fixed for the known ones, else by its place among ``techniques``."""
    if technique in KNOWN:
        return PALETTE[KNOWN.index(technique)]
    others = sorted(t for t in {*techniques, technique} if t not in KNOWN)
    return PALETTE[(len(KNOWN) + others.index(technique)) % len(PALETTE)]


def symbol(status: str) -> str:
    return STATUS_MARKERS.get(status, ("circle-open", "o"))[0]


def marker(status: str) -> str:
    return STATUS_MARKERS.get(status, ("circle-open", "o"))[1]


def value_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def params_text(params: dict, sep: str = "<br>") -> str:
    """{"lr": 0.001, "lmbda": 0.5} -> "lmbda=0.5<br>lr=0.001" (keys sorted)."""
    return sep.join(f"{k}={value_text(v)}" for k, v in sorted(params.items())) or "(defaults)"
