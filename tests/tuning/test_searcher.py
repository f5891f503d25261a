"""The searcher: one Optuna study and one share of the trials per technique; early-stopped trials are
PRUNED, diverged ones get the worst objective. Ray's own ``OptunaSearch`` is the reference for the
suggestions."""
import math

import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tuning.sweep.searcher import make_sampler, make_searcher
from tuning.spec.space import OptunaSpace, split_config
from tuning.spec.sweep import SpecError, from_dict

from tests.tuning.sweep_helpers import tiny_spec


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_outcomes_reach_the_study_of_their_technique_with_the_right_state(kind):
    spec = from_dict(tiny_spec(searcher={"kind": kind}), source="tiny.yaml")
    searcher, space = make_searcher(spec)
    assert space == {}
    configs = {t: searcher.suggest(t) for t in ("a", "b", "c", "d")}
    owners = {t: split_config(c)[0] for t, c in configs.items()}
    assert owners == {"a": "adamq3r", "b": "adamw", "c": "adamq3r", "d": "adamw"}      # interleaved from the start
    for config in configs.values():                      # each config is one technique's full parameter set
        technique, params = split_config(config)
        assert set(params) == set(spec.spaces[technique])
    searcher.on_trial_result("a", {"objective": 0.3, "training_iteration": 1, "epoch": 1})
    searcher.on_trial_complete("a", {"objective": 0.3, "epoch": 1, "status": "running"})       # ASHA stopped it
    searcher.on_trial_complete("b", {"epoch": 2, "status": "diverged"})                        # no accuracy
    searcher.on_trial_complete("c", {"objective": 0.71, "epoch": spec.epochs, "status": "completed"})
    searcher.on_trial_complete("d", None, error=True)                                          # raised
    q3r_study, adamw_study = (searcher.searchers[t].study for t in ("adamq3r", "adamw"))
    assert [(t.state, t.value) for t in q3r_study.trials] == [(TrialState.PRUNED, 0.3), (TrialState.COMPLETE, 0.71)]
    assert [(t.state, t.value) for t in adamw_study.trials] == [(TrialState.COMPLETE, 0.0), (TrialState.FAIL, None)]
    assert q3r_study.trials[0].intermediate_values == {1: 0.3}     # pruned: its last reported value
    assert all(set(t.params) <= {"adamq3r.lr", "adamq3r.lmbda"} for t in q3r_study.trials)   # no cross-talk


def test_each_technique_gets_its_share_then_the_search_finishes():
    techniques = {"adamq3r": {"lmbda": {"loguniform": [0.1, 10.0]}}, "adamw": {"lr": {"loguniform": [1e-3, 1e-2]}},
                  "lora": {"lr": {"loguniform": [1e-3, 1e-2]}}}
    spec = from_dict(tiny_spec(techniques=techniques, num_samples=7, samples_per_technique={"lora": 1}),
                     source="tiny.yaml")
    assert spec.allocation() == {"adamq3r": 3, "adamw": 3, "lora": 1} and spec.total_samples == 7
    searcher, _ = make_searcher(spec)
    owners = [split_config(searcher.suggest(str(i)))[0] for i in range(7)]
    assert sorted(owners) == sorted(["adamq3r"] * 3 + ["adamw"] * 3 + ["lora"])
    assert owners[:3] == ["adamq3r", "adamw", "lora"]                                # every technique early
    assert searcher.suggest("8") == Searcher.FINISHED


def test_allocation_splits_evenly_and_honours_overrides():
    five = {t: {} for t in ("adamq3r", "adam_q3r_loss", "adamw", "lora", "lorita")}
    assert from_dict(tiny_spec(techniques=five, num_samples=12)).allocation() == \
        {"adamq3r": 3, "adam_q3r_loss": 3, "adamw": 2, "lora": 2, "lorita": 2}
    assert from_dict(tiny_spec(techniques=five, num_samples=3)).allocation() == \
        {"adamq3r": 1, "adam_q3r_loss": 1, "adamw": 1, "lora": 0, "lorita": 0}
    spec = from_dict(tiny_spec(techniques=five, num_samples=10, samples_per_technique={"adamq3r": 6, "lora": 1}))
    assert spec.allocation() == {"adamq3r": 6, "adam_q3r_loss": 1, "adamw": 1, "lora": 1, "lorita": 1}
    with pytest.raises(SpecError, match=r"samples_per_technique names technique\(s\) \['lorita'\] that the sweep "
                                        r"does not search"):
        from_dict(tiny_spec(samples_per_technique={"lorita": 2}), source="tiny.yaml")


def test_multi_objective_values_are_the_retention_accuracies():
    spec = from_dict(tiny_spec(searcher={"kind": "multi"}), source="tiny.yaml")
    searcher, _ = make_searcher(spec)
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", {"acc@0.1": 0.4, "acc@0.5": 0.8, "objective": 0.6, "epoch": 4,
                                     "status": "completed"})
    searcher.on_trial_complete("b", {"epoch": 1, "status": "diverged"})
    (a,), (b,) = (searcher.searchers[t].study.trials for t in ("adamq3r", "adamw"))
    assert a.values == [0.4, 0.8] and b.values == [0.0, 0.0]


def test_grid_is_every_point_once():
    techniques = {"adamw": {"lr": {"choice": [1.0e-3, 2.0e-3, 4.0e-3]}}}
    spec = from_dict(tiny_spec(techniques=techniques, searcher={"kind": "grid"}, scheduler={"kind": "fifo"}),
                     source="tiny.yaml")
    _, space = make_searcher(spec)
    points = space["point"]["grid_search"]
    assert [split_config({"point": p}) for p in points] == [("adamw", {"lr": v}) for v in (1e-3, 2e-3, 4e-3)]


def outcome(config: dict) -> dict:
    """A completed trial's result, a smooth function of its configuration (the retentions for ``multi``)."""
    x = sum(math.log(v) for k, v in config.items() if k.endswith(("lr", "lmbda")))
    return {"objective": 0.5 + 0.3 * math.sin(x), "acc@0.1": 0.4 + 0.2 * math.cos(x),
            "acc@0.5": 0.6 + 0.1 * math.sin(x), "training_iteration": 4, "epoch": 4, "status": "completed"}


def drive(searcher, n: int, batch: int = 2, first: int = 0) -> list[dict]:
    """``n`` suggestions (trial ids from ``first``), ``batch`` at a time in flight (as with max_concurrent),
    each completed in order."""
    configs = []
    for start in range(first, first + n, batch):
        ids = [str(i) for i in range(start, min(first + n, start + batch))]
        configs += [(i, searcher.suggest(i)) for i in ids]
        for i, config in configs[-len(ids):]:
            searcher.on_trial_result(i, outcome(config))
            searcher.on_trial_complete(i, outcome(config))
    return [config for _, config in configs]


def by_technique(configs: list[dict]) -> dict[str, list[dict]]:
    out = {}
    for config in configs:
        out.setdefault(split_config(config)[0], []).append(config)
    return out


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_a_techniques_suggestions_are_those_of_rays_optuna_search_with_the_same_sampler(kind):
    """Completed trials only (where the two tell Optuna the same): one technique's study, suggestion for
    suggestion, against Ray's OptunaSearch over the same space and sampler seed, with as many of the
    technique's trials in flight (two: the techniques alternate)."""
    spec = from_dict(tiny_spec(searcher={"kind": kind, "n_startup_trials": 3}, num_samples=24), source="tiny.yaml")
    searcher, _ = make_searcher(spec)
    ours = by_technique(drive(searcher, 24, batch=4))
    for i, (technique, space) in enumerate(spec.spaces.items()):
        reference = OptunaSearch(space=OptunaSpace({technique: space}), metric="objective", mode="max",
                                 sampler=make_sampler(kind, spec.seed + 1000 * i, 3), study_name=technique)
        assert drive(reference, 12) == ours[technique]


@pytest.mark.parametrize("kind", ["tpe", "multi"])
def test_n_startup_trials_reaches_every_techniques_sampler(kind):
    """TPE samples independently at random for its first n_startup_trials: those suggestions are the random
    sampler's with the same seed; the next one is TPE's own."""
    def streams(searcher_kind: str, n=None) -> dict[str, list[dict]]:
        searcher = {"kind": searcher_kind} if n is None else {"kind": searcher_kind, "n_startup_trials": n}
        return by_technique(drive(make_searcher(from_dict(tiny_spec(searcher=searcher, num_samples=16)))[0], 16))

    random = streams("random")
    for n in (2, 5):
        tpe = streams(kind, n)
        for technique in random:
            same = [a == b for a, b in zip(tpe[technique], random[technique])]
            assert same[: n + 1] == [True] * n + [False], (technique, n, same)
    assert streams(kind) == streams(kind, 5)                       # the default


def test_a_restored_searcher_continues_as_the_original_would(tmp_path):
    """What a resumed sweep does: Ray saves the searcher, a new one (built from the spec) restores it."""
    spec = from_dict(tiny_spec(searcher={"n_startup_trials": 2}, num_samples=16), source="tiny.yaml")
    original, _ = make_searcher(spec)
    drive(original, 6)
    pending = original.suggest("pending")                           # in flight when the sweep stopped
    original.save(str(tmp_path / "searcher.pkl"))
    restored, _ = make_searcher(spec)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert {t: len(s.study.trials) for t, s in restored.searchers.items()} == {"adamq3r": 4, "adamw": 3}
    for searcher in (restored, original):
        searcher.on_trial_complete("pending", outcome(pending))
    continued = drive(restored, 8, first=6)
    assert continued == drive(original, 8, first=6)
    fresh, _ = make_searcher(spec)
    assert drive(fresh, 8, first=6) != continued                   # what was restored decided them


@pytest.mark.parametrize("kind", ["tpe", "gp", "random"])
def test_start_points_are_each_techniques_first_trials_then_its_sampler_goes_on(kind):
    """``searcher.start_points``: a technique's first suggestions are its points (parameters a point leaves out
    are sampled); then the sampler's own suggestions; the other techniques' studies are untouched."""
    points = {"adamq3r": [{"lmbda": 0.3, "lr": 1.2e-3}, {"lmbda": 3.0}]}
    searcher = {"kind": kind, "n_startup_trials": 2}
    with_points = by_technique(drive(make_searcher(from_dict(tiny_spec(
        searcher={**searcher, "start_points": points}, num_samples=12)))[0], 12))
    plain = by_technique(drive(make_searcher(from_dict(tiny_spec(searcher=searcher, num_samples=12)))[0], 12))
    q3r = [split_config(c)[1] for c in with_points["adamq3r"]]
    assert (q3r[0]["lmbda"], q3r[0]["lr"]) == (0.3, 1.2e-3)
    assert q3r[1]["lmbda"] == 3.0 and q3r[1]["lr"] != 1.2e-3      # lr sampled
    assert all(c["lmbda"] not in (0.3, 3.0) for c in q3r[2:])    # then the sampler's own
    assert with_points["adamw"] == plain["adamw"]                  # the other technique is untouched
    assert with_points["adamq3r"] != plain["adamq3r"]


def test_gp_is_optunas_gaussian_process_sampler_after_its_startup():
    """kind gp: every technique's study samples with Optuna's GPSampler; after n_startup_trials random ones
    its suggestions are the GP's, not the random sampler's."""
    import optuna

    spec = from_dict(tiny_spec(searcher={"kind": "gp", "n_startup_trials": 2}, num_samples=12), source="tiny.yaml")
    searcher, _ = make_searcher(spec)
    assert all(isinstance(s.study.sampler, optuna.samplers.GPSampler) for s in searcher.searchers.values())
    gp = by_technique(drive(searcher, 12))
    random = by_technique(drive(make_searcher(from_dict(tiny_spec(searcher={"kind": "random"}, num_samples=12)))[0], 12))
    assert all(gp[t][2:] != random[t][2:] for t in gp)


def test_start_points_must_name_searched_parameters_and_their_values():
    def spec(points, kind="tpe"):
        return from_dict(tiny_spec(searcher={"kind": kind, "start_points": points}), source="tiny.yaml")
    with pytest.raises(SpecError, match=r"names technique 'lora', which the sweep does not search"):
        spec({"lora": [{"lr": 1e-3}]})
    with pytest.raises(SpecError, match=r"start_points.adamq3r.rank is not a searched parameter"):
        spec({"adamq3r": [{"rank": 4}]})
    with pytest.raises(SpecError, match=r"start_points.adamq3r.lmbda must be a value of"):
        spec({"adamq3r": [{"lmbda": 100.0}]})
    assert spec({"adamq3r": [{"lmbda": 1.0}]}).searcher.start_points == {"adamq3r": [{"lmbda": 1.0}]}
