"""The paper's Table 1 in our units (search_spaces/paper_vit_cifar10.yaml), checked on a tiny local subset."""
from pathlib import Path

import pytest

from tuning.spec.space import grid_points
from tuning.spec.sweep import load_spec
from tuning.trial.recipe import run_trial

from tests.trial.test_data import cifar10_root  # noqa: F401 - the tiny CIFAR-10 folder fixture

SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "paper_vit_cifar10.yaml"


def test_table_1_in_our_units():
    spec = load_spec(SPEC)
    q = spec.spaces["adamq3r"]
    assert q["lr"].value == pytest.approx(3 * 4e-5) and q["lmbda"].values == [2e-3, 2e-2]   # (3 lr, 2 lambda)
    assert q["target_rank"].values == [0.1, 0.15, 0.2] and q["period"].value == 5
    assert all(spec.spaces[t]["lr"].value == 4e-5 for t in ("adamw", "lora", "lorita"))     # baselines unchanged
    counts = {t: sum(p["technique"] == t for p in grid_points(spec.spaces)) for t in spec.spaces}
    assert counts == {"adamq3r": 6, "adamw": 1, "lora": 3, "lorita": 4}
    assert (spec.data.image_size, spec.model.patch_size, spec.epochs) == (224, 16, 100)


def test_one_trial_of_it_runs_on_a_tiny_local_cifar10(cifar10_root):  # noqa: F811
    spec = load_spec(SPEC, [f"data.data_root={cifar10_root}", "data.image_size=32", "model.patch_size=8",
                            "model.depth=1", "model.width=16", "model.heads=2", "epochs=1", "train.batch_size=5",
                            "retentions=[0.1, 1.0]", "resources.gpu=0"])
    point = grid_points(spec.spaces)[0]
    cfg = spec.trial_config("adamq3r", {k.split(".", 1)[1]: v for k, v in point.items() if k != "technique"})
    result = run_trial(cfg)
    assert result.status == "completed" and 0 <= result.metrics["acc@0.1"] <= 1
