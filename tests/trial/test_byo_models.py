"""Bring your own model and data: timm by name (route 1), any callable (route 2), the default targets,
``q3r-tune targets``, the registries, and bad user code (one line, before anything trains)."""
from __future__ import annotations

import math
import sys
import textwrap

import pytest
import torch
from torch import nn

from q3r.lowrank_io import load_lowrank
from q3r.targets import classifier_head, select_targets
from tuning import cli
from tuning.trial import registry
from tuning.trial import spec as config
from tuning.trial.data import DatasetInfo, load_dataset
from tuning.trial.export import export_model, load_exported
from tuning.trial.models import BUILDERS, build_model
from tuning.trial.recipe import run_trial
from tuning.trial.targets import format_targets, model_targets, spec_targets
from tuning.trial.usercode import UserCodeError, import_factory, user_code_paths

DIGITS = DatasetInfo("digits", 8, 1, 10)
TINY_TRAIN = {"epochs": 3, "batch_size": 25, "eval_every": 1, "retentions": [0.2, 1.0], "device": "cpu", "seed": 3,
              "collapse_patience": 10}

MY_CODE = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tuning.trial.data import load_digits
from tuning.trial.models import build_vit
from tuning.trial.data import DatasetInfo


def shipped_vit(num_classes, in_chans, img_size, depth=1, width=32):
    """The built-in ViT, through route 2 (sized from the dataset facts the factory is given)."""
    return build_vit(DatasetInfo("digits", img_size, in_chans, num_classes), depth=depth, width=width, heads=2)


def digits(seed=0):
    train, val, info = load_digits(seed=seed)
    return train, val, info.num_classes


class Mlp(nn.Module):
    """A user's own model: flatten, two hidden Linears, a head."""

    def __init__(self, num_classes, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


def not_a_model(**_):
    return "a string"


def only_a_head(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


def not_a_dataset():
    return [1, 2], None, 10


NOT_CALLABLE = 3
'''


@pytest.fixture
def code(tmp_path):
    """A folder with the user's module ``my_code.py`` (and a spec written there finds it); each test
    imports it afresh from its own folder."""
    (tmp_path / "my_code.py").write_text(MY_CODE)
    (tmp_path / "broken_code.py").write_text("raise RuntimeError('boom at import')\n")
    yield tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] in ("my_code", "broken_code", "pkg")]:
        del sys.modules[name]
    for folder in (str(tmp_path), str(tmp_path.resolve())):
        while folder in sys.path:
            sys.path.remove(folder)


def spec_file(folder, text: str, name: str = "trial.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def trial(**sections):
    return config.from_dict({"train": TINY_TRAIN, **sections})


# ---- the registries ----------------------------------------------------------------------------------
def test_every_registered_name_has_its_builder_and_the_schema_space_and_report_read_them():
    from dashboards.style import KNOWN
    from tuning.spec.space import SPACES
    from tuning.trial.data import DATASETS
    from tuning.trial.techniques import TECHNIQUES

    assert list(TECHNIQUES) == registry.list_techniques() == list(SPACES) == list(KNOWN)
    assert list(BUILDERS) == registry.list_model_kinds() == list(config.MODEL_KINDS)
    assert list(DATASETS) == registry.list_datasets() == list(config.DATASET_NAMES)
    for info in registry.TECHNIQUES:             # each technique's space: the common parameters and its own
        assert set(SPACES[info.name].model_fields) == set(registry.COMMON_PARAMS) | set(info.params)
    with pytest.raises(ValueError, match=r"unknown technique 'sgd'; known: \['adamq3r'"):
        registry.TECHNIQUES.get("sgd")


# ---- route 1: timm by name ---------------------------------------------------------------------------
def test_timm_by_name_is_sized_from_the_dataset_unless_kwargs_say_otherwise():
    cfg = config.ModelSpec(kind="timm", name="vit_tiny_patch16_224",
                           kwargs={"patch_size": 2, "depth": 1, "embed_dim": 16, "num_heads": 2})
    model = build_model(cfg, DIGITS)
    assert model.num_classes == 10 and model.patch_embed.proj.in_channels == 1 and model.patch_embed.img_size == (8, 8)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    wide = build_model(cfg.model_copy(update={"kwargs": {**cfg.kwargs, "num_classes": 4}}), DIGITS)
    assert wide.num_classes == 4                 # kwargs win over the dataset
    resnet = build_model(config.ModelSpec(kind="timm", name="resnet10t"), DIGITS)   # takes no img_size
    assert resnet.fc.out_features == 10 and resnet(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="model.name 'no_such_net' is no timm architecture"):
        build_model(config.ModelSpec(kind="timm", name="no_such_net"), DIGITS)
    with pytest.raises(ValueError, match="may not set pretrained"):
        build_model(config.ModelSpec(kind="timm", name="resnet10t", kwargs={"pretrained": True}), DIGITS)


def test_a_model_kind_takes_only_its_own_fields():
    for raw, message in (({"kind": "timm"}, "model: name must be set for kind timm"),
                         ({"kind": "python"}, "model: factory must be set for kind python"),
                         ({"kind": "vit", "name": "resnet18"}, "model: name is read for kind timm only"),
                         ({"kind": "timm", "name": "x", "factory": "a:b"}, "model: factory is read for kind python only"),
                         ({"kind": "python", "factory": "no colon"}, "model.factory must be 'package.module:callable'")):
        with pytest.raises(config.SpecError, match=message):
            config.from_dict({"model": raw})
    with pytest.raises(config.SpecError, match="data: factory must be set for name python"):
        config.from_dict({"data": {"name": "python"}})
    with pytest.raises(config.SpecError, match="data: factory, kwargs and code are read for name python only"):
        config.from_dict({"data": {"name": "digits", "kwargs": {"a": 1}}})


# ---- route 2: any callable ---------------------------------------------------------------------------
def test_route_2_with_the_shipped_vit_and_digits_scores_as_the_built_in_ones(code):
    """The same network and data through factories give the built-in trial's numbers (same seed)."""
    built_in = run_trial(trial(model={"kind": "vit", "depth": 1, "width": 32, "heads": 2},
                               data={"name": "digits", "limit": 300}, technique={"lr": 5e-3}))
    path = spec_file(code, """
        data: {name: python, factory: "my_code:digits", kwargs: {seed: 3}, limit: 300}
        model: {kind: python, factory: "my_code:shipped_vit", kwargs: {depth: 1, width: 32}}
    """)
    cfg = config.load(path, [f"train.{k}={v}" for k, v in TINY_TRAIN.items()] + ["technique.lr=5e-3"])
    assert cfg.model.code == str(code.resolve()) == cfg.data.code     # the spec's folder, written on load
    byo = run_trial(cfg)
    assert byo.status == built_in.status == "completed"
    assert set(byo.metrics) == set(built_in.metrics)
    for key, value in built_in.metrics.items():
        if key != "time_s" and isinstance(value, (int, float)):
            assert byo.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_route_2_trains_exports_and_loads_into_a_fresh_instance_of_the_users_model(code, tmp_path):
    path = spec_file(code, """
        data: {name: digits, limit: 300}
        model: {kind: python, factory: "my_code:Mlp", kwargs: {hidden: 24}}
        technique: {name: adamq3r, lr: 5.0e-3, lmbda: 1.0, target_rank: 0.2}
    """)
    cfg = config.load(path, [f"train.{k}={v}" for k, v in TINY_TRAIN.items()])
    result = run_trial(cfg, checkpoint_dir=str(tmp_path / "run"))
    assert result.status == "completed"
    export = export_model(cfg, tmp_path / "run" / "checkpoint.pt", 0.2, tmp_path / "out")
    fresh = import_factory("my_code:Mlp", str(code))(num_classes=10, hidden=24)
    loaded = load_lowrank(fresh, tmp_path / "out" / "model.safetensors").eval()
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), export.model(x), atol=1e-6)
        assert torch.allclose(load_exported(tmp_path / "out")(x), export.model(x), atol=1e-6)
    assert sum(p.numel() for p in loaded.parameters()) == export.parameters < export.dense_parameters
    again = config.load(tmp_path / "out" / "spec.yaml")          # the exported spec reruns the same factory
    assert (again.model.factory, again.model.code) == ("my_code:Mlp", str(code.resolve()))


def test_bad_user_code_is_one_line_naming_the_module_and_what_failed(code):
    cases = {"nope_module:f": "model.factory 'nope_module:f': no module named 'nope_module'",
             "broken_code:f": "importing module 'broken_code' failed: RuntimeError: boom at import",
             "my_code:missing": r"module 'my_code' \(.*my_code.py\) has no attribute 'missing'",
             "my_code:NOT_CALLABLE": "'NOT_CALLABLE' in module 'my_code' is a int, not a callable"}
    for factory, message in cases.items():
        with pytest.raises(UserCodeError, match=message) as err:
            import_factory(factory, str(code), "model.factory")
        assert "\n" not in str(err.value)
    with pytest.raises(UserCodeError, match="model.factory 'my_code:not_a_model' returned a str, not a torch.nn.Module"):
        build_model(config.ModelSpec(kind="python", factory="my_code:not_a_model", code=str(code)), DIGITS)
    with pytest.raises(UserCodeError, match="data.factory 'my_code:not_a_dataset': its val_set is a NoneType"):
        load_dataset("python", factory="my_code:not_a_dataset", code=str(code))


def test_q3r_tune_train_fails_before_training_on_a_factory_that_does_not_import(code, tmp_path, capsys):
    path = spec_file(code, 'model: {kind: python, factory: "nope_module:Net"}\n')
    rc = cli.main(["train", str(path), "--out", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "q3r-tune train: model.factory 'nope_module:Net': no module named 'nope_module' " \
                              f"(searched {code.resolve()} and PYTHONPATH)"
    assert not (tmp_path / "out").exists()


def test_user_code_paths_are_the_users_modules_not_installed_packages(code):
    (code / "pkg").mkdir()
    (code / "pkg" / "__init__.py").write_text("")
    (code / "pkg" / "nets.py").write_text("def net():\n    pass\n")
    cfg = config.from_dict({"model": {"kind": "python", "factory": "pkg.nets:net", "code": str(code)},
                            "data": {"name": "python", "factory": "my_code:digits", "code": str(code)}})
    assert user_code_paths(cfg) == [str((code / "pkg").resolve()), str((code / "my_code.py").resolve())]
    timm_class = config.from_dict({"model": {"kind": "python", "factory": "timm.models.mlp_mixer:MlpMixer"}})
    assert user_code_paths(timm_class) == []                      # installed: on the workers already


# ---- which layers are regularized --------------------------------------------------------------------
def test_the_default_targets_are_every_linear_but_the_head_and_for_the_vit_the_old_default():
    from tuning.trial.models import build_vit

    vit = build_vit(DIGITS, depth=2, width=32, heads=2)
    assert [t.name for t in select_targets(vit, None)] == [t.name for t in select_targets(vit, ("qkv", "proj", "fc1", "fc2"))]
    assert config.ModelSpec().modules == [] and classifier_head(vit) == "head"
    mlp = import_factory("torch.nn:Sequential")(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10))
    assert [t.name for t in select_targets(mlp, ())] == ["1"]     # the last Linear is the head
    with pytest.raises(ValueError, match="Sequential has nothing to regularize: .* its only nn.Linear is the "
                                         "classifier head '1'"):
        select_targets(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ())


def test_targets_report_counts_against_the_rank_formula():
    model = nn.Sequential(nn.Linear(12, 30), nn.ReLU(), nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 3))
    report = model_targets(model, [], [0.1, 0.5, 1.0])
    assert [(r.name, r.shape) for r in report.rows] == [("0", (30, 12)), ("2", (8, 30))]
    for row in report.rows:                    # r(p) = floor(p d1 d2 / (d1 + d2)), at least 1
        d1, d2 = row.shape
        assert row.ranks == {"0.1": max(1, math.floor(0.1 * d1 * d2 / (d1 + d2))),
                             "0.5": math.floor(0.5 * d1 * d2 / (d1 + d2)), "1": None}
    total = sum(p.numel() for p in model.parameters())
    assert (report.total, report.targeted) == (total, 30 * 12 + 8 * 30)
    r = report.rows[0].ranks["0.5"]            # (30, 12) at p = 0.5: r (30 + 12) < 360 numbers, stored as factors
    assert report.kept["0.5"] == total - 600 + r * 42 + min(240, report.rows[1].ranks["0.5"] * 38)
    text = format_targets(report)
    assert "regularized params: 600 || all params: " in text and "(classifier head: 4)" in text


def test_q3r_tune_targets_prints_a_spec_and_fails_in_one_line_with_nothing_to_regularize(code, capsys):
    path = spec_file(code, """
        model: {kind: python, factory: "my_code:Mlp"}
        train: {retentions: [0.25, 1.0]}
    """)
    assert cli.main(["targets", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Mlp: 2 matrices regularized" in out and "net.1" in out and "net.3" in out and "r@0.25" in out
    assert cli.main(["targets", str(path), "--set", "model.factory=my_code:only_a_head"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("q3r-tune targets: Sequential has nothing to regularize") and "\n" not in err
    report = spec_targets(config.load(path))
    assert [r.name for r in report.rows] == ["net.1", "net.3"] and report.head == "net.5"
