"""The sweep-efficiency benchmark: its table, its scores against hand-made tables, and a tiny replay through
the real Ray Tuner, searcher and scheduler (benchmarks/efficiency)."""
import math
import numpy as np
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.efficiency import scores, table  # noqa: E402
from benchmarks.efficiency.replay import by_config, grid_epochs, replay_metrics, reports_of, strategy_spec  # noqa: E402
from benchmarks.efficiency.trainable import config_key, key_of_config, replay_trial  # noqa: E402
from benchmarks.efficiency.strategies import sized_allocation  # noqa: E402
from tuning.analysis.records import TrialRecord

LEVELS = (0.1, 0.2, 1.0)
DENSE, PARAMS = 1000, {0.1: 200, 0.2: 300, 1.0: 1000}


def row(trial, technique, params, epoch, accs, status="completed", role="trial", confirms="", seed=0, seconds=1.0):
    out = {"trial_id": trial, "role": role, "confirms": confirms, "seed": seed, "technique": technique,
           **params, "epoch": epoch, "status": status, "seconds": seconds}
    for p, a in zip(LEVELS, accs):
        out[f"acc@{p:g}"], out[f"params@{p:g}"], out[f"targeted@{p:g}"] = a, PARAMS[p], p
    out["objective"] = sum(accs[:-1]) / (len(accs) - 1)
    return out


def small_table(tmp_path: Path, epochs: int = 4) -> Path:
    """adamw lr x {1e-3, 2e-3} and lora lr x {1e-3, 2e-3}: accuracy grows by epoch (t1 slowly, as (e/E)^3, and
    ends above t0, so the early epochs rank adamw backwards); lora lr=2e-3 collapses at epoch 2."""
    rows = []
    final = {("adamw", 1e-3): (0.5, 0.6, 0.9), ("adamw", 2e-3): (0.45, 0.7, 0.95),
             ("lora", 1e-3): (0.8, 0.85, 0.86), ("lora", 2e-3): (0.1, 0.1, 0.1)}
    for i, ((technique, lr), accs) in enumerate(final.items()):
        last = 2 if technique == "lora" and lr == 2e-3 else epochs
        for e in range(1, last + 1):
            power = 3 if i == 1 else 1
            rows.append(row(f"t{i}", technique, {"lr": lr}, e, [a * (e / epochs) ** power for a in accs],
                            status="collapsed" if last < epochs else "completed", seconds=1.0 + i))
    for e in range(1, epochs + 1):                     # a second seed of t0
        rows.append(row("s0", "adamw", {"lr": 1e-3}, e, [0.45 * e / epochs, 0.62 * e / epochs, 0.9 * e / epochs],
                        role="confirmation", confirms="t0", seed=1))
    return table.write(rows, tmp_path / "t.csv.gz")


def rec(trial, technique, accs, status="completed"):
    metrics = {}
    for p, a in zip(LEVELS, accs):
        metrics[f"acc@{p:g}"], metrics[f"params@{p:g}"], metrics[f"targeted@{p:g}"] = a, PARAMS[p], p
    return TrialRecord(trial_id=trial, technique=technique, params={}, status=status, epoch=4, metrics=metrics)


def test_table_round_trip(tmp_path):
    runs = table.load(small_table(tmp_path))
    assert [r.trial_id for r in runs] == ["t0", "t1", "t2", "t3", "s0"]
    assert runs[0].params == {"lr": 1e-3} and runs[3].status == "collapsed" and len(runs[3].rows) == 2
    assert runs[4].role == "confirmation" and runs[4].confirms == "t0" and runs[4].seed == 1
    assert runs[1].rows[-1]["acc@0.2"] == pytest.approx(0.7) and runs[1].rows[0]["seconds"] == 2.0
    assert grid_epochs(runs) == 4 + 4 + 4 + 2
    with pytest.raises(FileNotFoundError, match="no benchmark table"):
        table.load(tmp_path / "missing.csv.gz")


def test_hypervolume_ratio_against_hand_computed_areas():
    # grid front: (200, 0.8) (300, 0.85) (1000, 0.95); area with ref 1000 = 0.1*0.8 + 0.7*0.85 + 0 (at 1.0)
    grid = [rec("a", "x", (0.5, 0.7, 0.95)), rec("b", "y", (0.8, 0.85, 0.86))]
    whole = 0.1 * 0.8 + 0.7 * 0.85
    assert scores.hv(grid, 1000) == pytest.approx(whole)
    only_a = 0.1 * 0.5 + 0.7 * 0.7            # (200, 0.5) (300, 0.7): the point at 1000 adds no area
    assert scores.hv_ratio([grid[0]], grid) == pytest.approx(only_a / whole)
    assert scores.hv_ratio(grid, grid) == pytest.approx(1.0)
    assert scores.hv_ratio([rec("c", "x", (0.9, 0.9, 0.9), status="stopped")], grid) == 0.0   # not completed
    assert scores.hv_ratio([], grid) == 0.0


def test_regret_of_the_recommendation():
    grid = [rec("a", "x", (0.5, 0.7, 0.95)), rec("b", "y", (0.8, 0.85, 0.86))]
    assert scores.regret(grid, grid, 0.2) == pytest.approx(0.0)
    assert scores.regret([grid[0]], grid, 0.2) == pytest.approx(0.85 - 0.7)
    assert scores.regret([grid[0]], grid, 0.1) == pytest.approx(0.8 - 0.5)
    assert scores.regret([], grid, 0.1) == pytest.approx(0.8)             # nothing recommended


def test_spearman_and_rung_fidelity(tmp_path):
    assert scores.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert scores.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert scores.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505139)  # scipy's, ties share ranks
    assert math.isnan(scores.spearman([1, 1, 1], [1, 2, 3]))
    runs = table.load(small_table(tmp_path))
    fid = scores.rung_fidelity(runs, [1, 3], 4)
    assert set(fid) == {"adamw", "lora"}
    # lora: t3 collapsed at epoch 2 scores 0 at epoch 4 (below t2) and less than t2 at epoch 1: the same order
    assert fid["lora"][1] == pytest.approx(1.0)
    # adamw: t1 (final 0.575) trails t0 (final 0.55) until the end: its early rungs rank them backwards
    assert fid["adamw"][1] == pytest.approx(-1.0) and fid["adamw"][3] == pytest.approx(-1.0)
    noise = scores.noise_floor(runs, LEVELS)
    assert len(noise) == 1 and noise[0]["mean |diff|"] == pytest.approx((0.05 + 0.02) / 2)


def test_sized_allocation():
    assert sized_allocation({"a": 18, "b": 6, "c": 6}, 10) == {"a": 6, "b": 2, "c": 2}
    assert sum(sized_allocation({"a": 5, "b": 1}, 3).values()) == 3


def test_replay_trainable_reports_the_table_rows(tmp_path, monkeypatch):
    runs = table.load(small_table(tmp_path))
    table_runs = by_config(runs)
    assert config_key("adamw", {"lr": 0.001}) in table_runs and len(table_runs) == 4
    collapsed = table_runs[config_key("lora", {"lr": 2e-3})]
    first, last = replay_metrics(collapsed, 0, "mean", LEVELS), replay_metrics(collapsed, 1, "mean", LEVELS)
    assert first["status"] == "running" and last["status"] == "collapsed" and last["epoch"] == 2
    assert last["objective"] == pytest.approx((0.05 + 0.05) / 2)
    assert replay_metrics(collapsed, 1, "acc@0.2", LEVELS)["objective"] == pytest.approx(0.05)
    reported, slept = [], []
    monkeypatch.setattr("benchmarks.efficiency.trainable.tune.report", lambda m: reported.append(m))
    monkeypatch.setattr("benchmarks.efficiency.trainable.time.sleep", lambda s: slept.append(s))
    reports = reports_of(runs, "mean", LEVELS)
    replay_trial({"technique": "adamw", "adamw.lr": 2e-3}, reports, scale=0.5)
    assert [m["epoch"] for m in reported] == [1, 2, 3, 4] and slept == [1.0, 1.0, 1.0, 1.0]
    assert reported[-1]["status"] == "completed" and reported[-1]["acc@0.2"] == pytest.approx(0.7)
    assert reported[-1]["objective"] == pytest.approx((0.45 + 0.7) / 2)
    with pytest.raises(KeyError, match="no run of adamw"):
        replay_trial({"technique": "adamw", "adamw.lr": 5e-3}, reports)


def test_the_trainable_reads_a_config_as_the_sweep_does():
    from tuning.spec.space import split_config
    for config in ({"technique": "lorita", "lorita.lr": 1e-3, "lorita.depth": 2, "lorita.alpha": 0.3},
                   {"point": {"technique": "adamq3r", "adamq3r.lr": 2e-3, "adamq3r.lmbda": 3.0, "adamq3r.period": 5}}):
        assert key_of_config(config) == config_key(*split_config(config))


def base_spec(runs):
    from benchmarks.efficiency.cli import grid_of
    return table.grid_dict(4, grid_of(runs))


def test_tiny_replay_through_ray_asha_decides_in_recorded_time_order(tmp_path, ray_session):
    from benchmarks.efficiency.replay import replay

    runs = table.load(small_table(tmp_path))
    grid = scores.grid_records(runs)
    # grid + ASHA (grace 1, rf 2, one sample per rung): within each technique the two trials start together; the one
    # with the shorter recorded epochs (t0 before t1, t2 before t3) reaches rung 1 first and sets the cutoff, the
    # other is below it there and is stopped. Were the simulated time ignored, t1 could arrive first and survive.
    spec = strategy_spec(base_spec(runs), 0, "grid", {"kind": "asha", "grace_period": 1, "reduction_factor": 2,
                                                      "min_samples": 1}, 1)
    finished = replay(spec, runs, workdir=tmp_path / "ray")
    ends = {(f.record.technique, f.record.params["lr"]): (f.record.status, f.record.epoch) for f in finished}
    assert ends == {("adamw", 1e-3): ("completed", 4), ("adamw", 2e-3): ("stopped", 1),
                    ("lora", 1e-3): ("completed", 4), ("lora", 2e-3): ("stopped", 1)}
    assert scores.total_spend(finished) == 10
    t0 = next(f.record for f in finished if f.record.params["lr"] == 1e-3 and f.record.technique == "adamw")
    assert t0.metrics["acc@0.2"] == pytest.approx(0.6)
    assert scores.hv_ratio([f.record for f in finished], grid) == pytest.approx(1.0)   # t1, t3 are dominated



def test_tiny_replay_of_tpe_seeds(tmp_path, ray_session):
    from benchmarks.efficiency.replay import replay

    runs = table.load(small_table(tmp_path))
    spends = []
    for seed in (0, 1):
        spec = strategy_spec(base_spec(runs), seed, "tpe", {"kind": "asha", "grace_period": 1, "reduction_factor": 2,
                                                            "min_samples": 2}, 4)
        finished = replay(spec, runs, workdir=tmp_path / "ray")
        assert len(finished) == 4 and sorted(f.record.technique for f in finished) == ["adamw", "adamw", "lora", "lora"]
        assert [f.spend for f in finished] == sorted(f.spend for f in finished)
        for f in finished:                     # every record is the table's row at the epoch the trial ended
            run = by_config(runs)[config_key(f.record.technique, f.record.params)]
            assert f.record.metrics["acc@0.1"] == pytest.approx(run.rows[f.record.epoch - 1]["acc@0.1"])
        assert scores.total_spend(finished) == sum(f.record.epoch for f in finished)   # every epoch counted once
        spends.append(scores.total_spend(finished))
    assert all(4 <= s <= 16 for s in spends)


def test_collapsed_runs_are_built_again_and_merged_by_configuration(tmp_path):
    path = small_table(tmp_path)
    grid = {"adamw": {"lr": [1e-3, 2e-3]}, "lora": {"lr": [1e-3, 2e-3]}}
    assert table.collapsed_grid(path, grid) == {"lora": {"lr": [2e-3]}}
    part = table.write([row("n0", "lora", {"lr": 2e-3}, e, [0.3, 0.4, 0.5]) for e in (1, 2, 3, 4)], tmp_path / "p.csv.gz")
    runs = table.load(table.merge(path, part, tmp_path / "m.csv.gz"))
    assert sorted(r.trial_id for r in runs) == ["n0", "s0", "t0", "t1", "t2"]
    assert next(r for r in runs if r.trial_id == "n0").status == "completed" and grid_epochs(runs) == 16


# --- a table with several seeds per configuration (issue 22) ---------------------------------------------------

SEEDED = {("adamw", 1e-3): [0.9, 0.3, 0.3], ("adamw", 2e-3): [0.6, 0.6, 0.6], ("lora", 1e-3): [0.4, 0.5]}


def seeded_table(tmp_path: Path, epochs: int = 3) -> Path:
    """adamw lr 1e-3: one lucky seed (0.9) and two at 0.3, mean 0.5; adamw lr 2e-3: 0.6 at every seed (the best
    by mean); lora: 2 seeds, 0.4 and 0.5. Each curve rises linearly to its final accuracy at every level."""
    rows = []
    for (technique, lr), finals in SEEDED.items():
        for seed, a in enumerate(finals):
            for e in range(1, epochs + 1):
                rows.append(row(f"{technique}{lr:g}-s{seed}", technique, {"lr": lr}, e, [a * e / epochs] * 3,
                                seed=seed))
    return table.write(rows, tmp_path / "seeded.csv.gz")


def test_build_seeded_keeps_the_chosen_grids_runs_and_the_last_sources(tmp_path):
    from benchmarks import sweep_efficiency

    q3r = {"lr": 2.0e-3, "lmbda": 1.0, "target_rank": 0.1, "period": 5}        # in GRID, not in SEED_GRID
    lora = {"lr": 2.0e-3, "target_rank": 0.05}                                 # in both
    first = table.write([row("a", "adamq3r", q3r, 1, [0.2, 0.3, 0.4]), row("b", "lora", lora, 1, [0.5, 0.5, 0.5]),
                         row("c", "lora", lora, 1, [0.6, 0.6, 0.6], role="confirmation", confirms="b", seed=1),
                         row("d", "lora", {"lr": 7e-3, "target_rank": 0.05}, 1, [0.1, 0.1, 0.1])],   # in no grid
                        tmp_path / "first.csv.gz")
    second = table.write([row("e", "lora", lora, 1, [0.7, 0.7, 0.7], seed=1)], tmp_path / "second.csv.gz")
    sources = [str(first), str(second)]
    sweep_efficiency.main(["build", "--seeded", *sources, "--out", str(tmp_path / "s.csv.gz")])
    runs = table.load(tmp_path / "s.csv.gz")                                  # SEED_GRID unless --grid full
    assert sorted((r.technique, r.seed, r.rows[-1]["acc@0.1"]) for r in runs) == [("lora", 0, 0.5), ("lora", 1, 0.7)]
    sweep_efficiency.main(["build", "--seeded", *sources, "--grid", "full", "--out", str(tmp_path / "f.csv.gz")])
    runs = table.load(tmp_path / "f.csv.gz")
    assert sorted((r.technique, r.seed, r.rows[-1]["acc@0.1"]) for r in runs) == \
        [("adamq3r", 0, 0.2), ("lora", 0, 0.5), ("lora", 1, 0.7)]
    assert all(r.role == "trial" for r in runs)


def test_seeded_table_means_and_noise(tmp_path):
    from benchmarks.efficiency import confidence

    runs = table.load(seeded_table(tmp_path))
    by = confidence.seeds_by_config(runs)
    assert [r.seed for r in by[config_key("adamw", {"lr": 1e-3})]] == [0, 1, 2]
    means = confidence.mean_records(runs)
    assert means[config_key("adamw", {"lr": 1e-3})].metrics["acc@0.1"] == pytest.approx(0.5)
    assert means[config_key("lora", {"lr": 1e-3})].metrics["objective"] == pytest.approx(0.45)
    assert grid_epochs(runs) == 9                    # one grid: each configuration once
    noise = confidence.config_noise(runs)
    stds = {r["technique"] + str(r["params"]["lr"]): r["std"] for r in noise}
    assert stds["adamw0.001"] == pytest.approx(0.34641016151377546)   # stdev(0.9, 0.3, 0.3)
    assert stds["adamw0.002"] == pytest.approx(0.0) and stds["lora0.001"] == pytest.approx(0.07071067811865477)
    assert confidence.seed_std(noise) == pytest.approx(0.07071067811865477)
    assert confidence.best_by_technique(means) == {"adamw": config_key("adamw", {"lr": 2e-3}),
                                                   "lora": config_key("lora", {"lr": 1e-3})}


def test_regret_is_against_the_mean_over_seeds(tmp_path):
    from benchmarks.efficiency import confidence

    runs = table.load(seeded_table(tmp_path))
    means = confidence.mean_records(runs)
    lucky = scores.final_record(next(r for r in runs if r.technique == "adamw" and r.params["lr"] == 1e-3 and r.seed == 0))
    best = scores.final_record(next(r for r in runs if r.params["lr"] == 2e-3 and r.seed == 1))
    # the lucky seed (0.9) makes lr 1e-3 the recommendation; its mean is 0.5, the best mean 0.6: regret 0.1
    assert confidence.mean_regret([lucky, best], means, 0.2) == pytest.approx(0.1)
    assert confidence.mean_regret([best], means, 0.1) == pytest.approx(0.0)
    assert confidence.mean_regret([], means, 0.1) == pytest.approx(0.6)   # nothing recommended
    # the single-seed score would have seen no regret at all
    assert scores.regret([lucky, best], [lucky, best], 0.2) == pytest.approx(0.0)


def test_bootstrap_exact_cases():
    from benchmarks.efficiency.confidence import bootstrap

    assert bootstrap([0.3] * 7) == {"median": pytest.approx(0.3), "lo": pytest.approx(0.3), "hi": pytest.approx(0.3)}
    assert bootstrap([0.2]) == {"median": 0.2, "lo": 0.2, "hi": 0.2}
    # two values: resampled medians are 0 (1/4), 0.5 (1/2), 1 (1/4): the 95% interval is [0, 1]
    assert bootstrap([0.0, 1.0]) == {"median": 0.5, "lo": 0.0, "hi": 1.0}
    # one outlier in 21: a resample's median is 100 only if 11 of 21 draws hit it (p ~ 1e-9): [0, 0]
    assert bootstrap([0.0] * 20 + [100.0]) == {"median": 0.0, "lo": 0.0, "hi": 0.0}
    # a chance: the mean of 0/1; all four draws 0 has p = 1/16 > 2.5%, so lo = 0 and hi = 1
    assert bootstrap([0, 0, 1, 1], stat=np.mean, name="chance") == {"chance": 0.5, "lo": 0.0, "hi": 1.0}
    # 40 of 0.1 and 40 of 0.2: the median's interval lies inside [0.1, 0.2] and holds the sample median
    c = bootstrap([0.1] * 40 + [0.2] * 40)
    assert c["median"] == pytest.approx(0.15) and 0.1 <= c["lo"] <= c["median"] <= c["hi"] <= 0.2
    with pytest.raises(ValueError, match="empty"):
        bootstrap([])


def test_seed_draw_is_fixed_spread_and_the_trainables(tmp_path):
    from benchmarks.efficiency.confidence import draw_seed
    from benchmarks.efficiency.trainable import pick_curve

    key = config_key("adamw", {"lr": 1e-3})
    draws = [draw_seed(0, i, key, 3) for i in range(300)]
    assert draws == [draw_seed(0, i, key, 3) for i in range(300)]             # the same replay: the same noise
    assert all(abs(draws.count(s) - 100) < 30 for s in range(3))               # every seed, about evenly
    assert draws != [draw_seed(1, i, key, 3) for i in range(300)]             # another replay seed: other draws
    curves = [["a"], ["b"], ["c"]]
    assert [pick_curve(curves, key, 0, i) for i in range(50)] == [curves[draw_seed(0, i, key, 3)] for i in range(50)]
    assert pick_curve([["only"]], key, 5, 7) == ["only"]
    with pytest.raises(ValueError, match="at least one"):
        draw_seed(0, 0, key, 0)


def test_replay_meets_one_seed_per_trial_and_the_json_shape(tmp_path, ray_session):
    import json

    from benchmarks.efficiency import confidence
    from benchmarks.efficiency.cli import confidence_json, score_run
    from benchmarks.efficiency.replay import replay

    runs = table.load(seeded_table(tmp_path))
    means, total = confidence.mean_records(runs), grid_epochs(runs)
    by = confidence.seeds_by_config(runs)
    per_seed = []
    for seed in (3,):                          # one replay: Ray's start-up dominates a test's time
        spec = strategy_spec(base_spec(runs), seed, "random", {"kind": "fifo"}, 5)
        finished = replay(spec, runs, workdir=tmp_path / "ray")
        assert len(finished) == 5
        tried: dict = {}                       # the k-th trial of a configuration meets draw_seed(seed, k, ...)'s curve
        for f in finished:
            tried.setdefault(config_key(f.record.technique, f.record.params), []).append(f.record.metrics["acc@0.1"])
        for key, seen in tried.items():
            drawn = [by[key][confidence.draw_seed(seed, k, key, len(by[key]))].rows[-1]["acc@0.1"] for k in range(len(seen))]
            assert sorted(seen) == pytest.approx(sorted(drawn))
        per_seed.append(score_run(finished, means, total))
    out = json.loads(json.dumps(confidence_json({"default": per_seed, "random": per_seed * 2},
                                                confidence.config_noise(runs))))
    assert set(out) == {"seed_std", "strategies"} and out["seed_std"] == pytest.approx(0.07071067811865477)
    assert set(out["strategies"]) == {"default", "random"}
    for by_f in out["strategies"].values():
        assert set(by_f) == {"0.1", "0.25", "0.5"}
        for c in by_f.values():
            for k in ("hv_ratio", "regret@0.1", "regret@0.2"):
                assert set(c[k]) == {"median", "lo", "hi"} and c[k]["lo"] <= c[k]["median"] <= c[k]["hi"]
            assert set(c["found"]) == {"adamw", "lora"} and set(c["found"]["adamw"]) == {"chance", "lo", "hi"}
    # by half the grid's epochs (4.5 of 9) some trials had ended; at the end every regret is measured on means
    assert all(0.0 <= s[0.5]["regret@0.2"] <= 0.6 + 1e-9 for s in [p["seeded"] for p in per_seed])


def test_the_bound_is_the_best_any_choice_of_the_reachable_trials_scores(tmp_path):
    """``ceiling``: which trials can have ended by a spend, and the floor of their regret / top of their
    hypervolume; on the seeded table adamw lr 2e-3 (mean 0.6, the best) is regret 0 alone, lora (0.45) 0.15."""
    from benchmarks.efficiency import confidence
    from benchmarks.efficiency.ceiling import bound, floor, reachable

    assert [reachable(f * 120, 12, 2) for f in (0.1, 0.25, 0.5)] == [(2, 1), (3, 2), (6, 5)]
    means = confidence.mean_records(table.load(seeded_table(tmp_path)))
    assert floor(means, ["lora"], 1, budgets=(0.1,)) == {"regret@0.1": pytest.approx(0.15),
                                                        "hv_ratio": pytest.approx(0.45 / 0.6),
                                                        "configs": [("lora", {"lr": 1e-3})]}
    both = floor(means, ["adamw", "lora"], 1, budgets=(0.1,))
    assert both["regret@0.1"] == 0.0 and both["configs"] == [("adamw", {"lr": 2e-3})]
    spec = strategy_spec(table.grid_dict(3, {"adamw": {"lr": [1e-3, 2e-3]}, "lora": {"lr": 1e-3}}), 0, "tpe",
                         {"kind": "fifo"}, 3)
    out = bound(means, spec, 9, 3, fractions=(0.3, 0.5))
    assert out["0.3"] == {"ended": 0}
    assert (out["0.5"]["ended"], out["0.5"]["started"]) == (1, 2)          # 4.5 epochs: one 3-epoch trial
    assert out["0.5"]["techniques"] == ["adamw", "lora"] and out["0.5"]["learned"] == 0
    assert out["0.5"]["floor"]["regret@0.2"] == 0.0


def test_the_bound_refuses_a_search_too_large_to_end_and_still_bounds_the_rest(tmp_path, monkeypatch):
    """On the 44-configuration grid at 25% the exact bound would try ~3e9 sets; it says so, per fraction."""
    from benchmarks.efficiency import ceiling, confidence
    from benchmarks.efficiency.ceiling import bound, floor, lines

    means = confidence.mean_records(table.load(seeded_table(tmp_path)))
    monkeypatch.setattr(ceiling, "MAX_CHOICES", 3)                  # 3 configurations: 3 sets of one, 6 of up to 2
    assert floor(means, ["adamw", "lora"], 1)["hv_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="6 sets of up to 2 of 3 configurations"):
        floor(means, ["adamw", "lora"], 2)
    spec = strategy_spec(table.grid_dict(3, {"adamw": {"lr": [1e-3, 2e-3]}, "lora": {"lr": 1e-3}}), 0, "tpe",
                         {"kind": "fifo"}, 3)
    out = bound(means, spec, 9, 3, fractions=(0.5, 1.0))              # 1 trial ended by 0.5, 3 by 1.0
    assert out["0.5"]["floor"]["regret@0.2"] == 0.0 and "refused" not in out["0.5"]
    assert out["1"]["ended"] == 3 and "floor" not in out["1"] and "more than 3" in out["1"]["refused"]
    assert lines(out)[-1].startswith("at 1: at most 3 trials ended") and "not bounded: " in lines(out)[-1]


def test_start_points_are_snapped_to_the_tables_grid():
    from benchmarks.efficiency.replay import snap

    techniques = table.grid_dict(12, table.SEED_GRID)["techniques"]
    points = {"adamq3r": [{"lr": 1.2e-3, "lmbda": 0.3, "target_rank": 0.2}], "adamw": [{"lr": 1.5e-3}],
              "lora": [{"target_rank": 0.1}], "lorita": [{"lr": 5e-4}], "nope": [{"lr": 1e-3}]}
    assert snap(points, techniques) == {"adamq3r": [{"lmbda": 3.0}],      # lr and target rank are fixed there
                                        "adamw": [{"lr": 2e-3}],          # log-nearer 2e-3 than 1e-3
                                        "lora": [{"target_rank": 0.05}]}  # a tie in log: the lower
    spec = strategy_spec(table.grid_dict(12, table.SEED_GRID), 0, "tpe", {"kind": "fifo"}, 6, start_points=points)
    assert spec.searcher.start_points == snap(points, techniques)


def test_the_default_strategy_carries_the_specs_start_points_and_sampler(tmp_path):
    import yaml

    from benchmarks.efficiency.strategies import same_search, strategies

    raw = yaml.safe_load(table.BASE_SPEC.read_text())
    raw["searcher"] = {"kind": "gp", "n_startup_trials": 2, "start_points": {"adamw": [{"lr": 1.0e-3}]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    named = strategies(10, 12, spec=tmp_path / "s.yaml")
    d = named["default"]
    assert (d.searcher, d.startup, d.start_points) == ("gp", 2, {"adamw": [{"lr": 1.0e-3}]})
    assert named["random"].start_points is None and not same_search(d, named["gp+asha su2"])
    assert same_search(strategies(10, 12)["default"], named["tpe+asha"])        # the shipped spec: plain TPE
