"""The sweep-efficiency benchmark: its table, its scores against hand-made tables, and a tiny replay through
the real Ray Tuner, searcher and scheduler (benchmarks/efficiency)."""
import math
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
