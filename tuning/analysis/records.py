"""What a sweep knows about one trial, as read back from MLflow (or built in tests by hand).

``tuning.tracking.results`` fills these from the sweep's child runs; ``tuning.analysis.pareto``, ``tuning.analysis.recommend``
and ``dashboards`` compute from them and never touch MLflow or Ray themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tuning.trial.metrics import COLLAPSED, COMPLETED, DIVERGED, RUNNING, levels

# Final statuses of a trial (the MLflow tag ``q3r.status``): a trial reports COMPLETED (ran its full
# budget of epochs), DIVERGED (non-finite loss) or COLLAPSED (accuracy at chance after rank collapse)
# itself, RUNNING until then (or when the sweep was interrupted); the sweep adds:
STOPPED = "stopped"          # stopped early by the scheduler (ASHA)
FAILED = "failed"            # raised an error
STATUSES = (COMPLETED, STOPPED, DIVERGED, COLLAPSED, FAILED, RUNNING)

# What a child run of a sweep is (the MLflow tag ``q3r.role``):
SEARCH = "trial"             # a trial of the search
CONFIRMATION = "confirmation"  # a search trial's configuration trained again with another seed


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a sweep.

    ``params`` holds the searched hyperparameters only, by their trial-spec field names
    (``{"lmbda": 0.5, "target_rank": 0.1, "period": 5, "lr": 1e-3}``); ``config`` is the whole
    trial spec as a dict (``tuning.trial.spec.from_dict(config)`` rebuilds it, ``q3r-tune train`` runs it).
    ``metrics`` is the last evaluation's flat dict: ``acc``, ``acc@0.2``, ``params@0.2`` (whole-model
    parameter count after truncation at 0.2), ``targeted@0.2`` (fraction of the targeted matrices'
    parameters kept), ``objective``, ``diag/mean/...``. ``history`` is every evaluation, in epoch order,
    each a flat dict with at least ``epoch`` and ``objective``. A confirmation run (``role``) is the
    configuration of search trial ``confirms`` trained again with another ``seed``.
    """

    trial_id: str
    technique: str
    params: dict
    status: str
    epoch: int
    metrics: dict
    history: tuple = ()
    config: dict = field(default_factory=dict)
    run_id: str = ""
    role: str = SEARCH          # SEARCH or CONFIRMATION
    confirms: str = ""          # a confirmation run: the trial_id of the search trial it trains again
    seed: int | None = None     # the trial's seed (train.seed)

    def retentions(self) -> list[float]:
        """The retention levels this trial was scored at, ascending."""
        return sorted(levels(self.metrics))


def outcomes(records, techniques=()) -> dict[str, dict[str, int]]:
    """{technique: {status: count}} in status order, for ``techniques`` (the sweep's, so that one
    that got no trial is listed too) and every technique the records hold."""
    records = [r for r in records if r.role == SEARCH]
    names = list(dict.fromkeys([*techniques, *(r.technique for r in records)]))
    out = {t: {} for t in names}
    for r in records:
        out[r.technique][r.status] = out[r.technique].get(r.status, 0) + 1
    return {t: {s: counts[s] for s in STATUSES if s in counts} for t, counts in out.items()}


def outcome_lines(records, techniques=()) -> list[str]:
    """One line per technique saying how its trials ended, and plainly when none completed; then one
    line for the confirmation runs, if any."""
    records = list(records)
    lines = []
    for technique, counts in outcomes(records, techniques).items():
        told = ", ".join(f"{n} {s}" for s, n in counts.items())
        if not counts:
            lines.append(f"{technique}: no trial ran (its share of num_samples was 0)")
        elif not counts.get(COMPLETED):
            lines.append(f"{technique}: NO completed trial ({told}): it is missing from the front and the "
                         f"recommendations")
        else:
            lines.append(f"{technique}: {told}")
    confirmations = [r for r in records if r.role == CONFIRMATION]
    if confirmations:
        done = sum(r.status == COMPLETED for r in confirmations)
        lines.append(f"confirmation: {len(confirmations)} runs ({done} completed) of "
                     f"{len({r.confirms for r in confirmations})} configuration(s) with new seeds")
    return lines
