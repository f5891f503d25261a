"""The replay trainable: reports a table run's precomputed results at their simulated times.

Kept free of torch, pydantic and the sweep modules (which take seconds to import on a busy machine): every
replay starts its own Ray workers, and each imports this module. The driver (``replay.py``) computes what
each run reports with the sweep's own ``tuning.sweep.trainable.trial_metrics``.
"""
from __future__ import annotations

import time

import ray
from ray import tune


def config_key(technique: str, params: dict) -> tuple:
    """A hashable (technique, params) key; numbers as floats so 2 == 2.0 from a CSV or a searcher."""
    def norm(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    return technique, tuple(sorted((k, norm(v)) for k, v in params.items()))


def key_of_config(config: dict) -> tuple:
    """The key of a Ray config: a grid ``{"point": {...}}`` or a searcher's ``{"technique", "<t>.<param>"...}``."""
    flat = dict(config)
    if isinstance(flat.get("point"), dict):
        flat.update(flat.pop("point"))
    technique = flat["technique"]
    prefix = f"{technique}."
    return config_key(technique, {k[len(prefix):]: (v.item() if hasattr(v, "item") else v)
                                  for k, v in flat.items() if isinstance(k, str) and k.startswith(prefix)})


def pick_curve(curves: list, key: tuple, replay_seed: int, occurrence: int) -> list:
    """The seed curve a trial meets: the only one, or ``confidence.draw_seed``'s (the same formula, kept here
    free of imports; a test checks they agree)."""
    if len(curves) == 1:
        return curves[0]
    import random
    return curves[random.Random(f"{replay_seed}|{occurrence}|{key!r}").randrange(len(curves))]


def replay_trial(config: dict, reports: dict, clock=None, scale: float = 0.0, replay_seed: int = 0) -> None:
    """Ray Tune function trainable. ``reports``: key -> one [(recorded seconds, metrics)] per seed of the run,
    in epoch order; a trial of a configuration with several seeds meets one seed's curve, drawn from
    (``replay_seed``, how many trials of the configuration came before it (the clock counts them; 0 without a
    clock), the configuration). With ``clock`` (a ``SimClock`` actor's name) each
    report waits for its simulated time; ``scale`` > 0 also sleeps that fraction of the recorded seconds."""
    key = key_of_config(config)
    if key not in reports:
        raise KeyError(f"the table has no run of {key[0]} {dict(key[1])}: the strategy's space must be the grid's")
    curves = reports[key]
    sim = ray.get_actor(clock) if clock else None
    trial_id = tune.get_context().get_trial_id() if sim else None
    now = ray.get(sim.start.remote(trial_id)) if sim else 0.0
    occurrence = ray.get(sim.occurrence.remote(trial_id, repr(key))) if sim and len(curves) > 1 else 0
    curve = pick_curve(curves, key, replay_seed, occurrence)
    for seconds, metrics in curve:
        now += seconds
        if scale:
            time.sleep(seconds * scale)
        if sim:
            ray.get(sim.wait.remote(trial_id, now))
        tune.report(dict(metrics))
