"""Sweep specs (tuning.spec.sweep) and their search spaces (tuning.spec.space)."""
import json
from pathlib import Path

import optuna
import pytest
import yaml

from tuning.spec.space import Fixed, LogUniform, OptunaSpace, describe, grid_points, split_config
from tuning.spec.sweep import SpecError, dump_spec, from_dict, json_schema, load_spec, objective_value
from tuning.trial.spec import TrialSpec

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))
FIVE = {"adamq3r", "adam_q3r_loss", "adamw", "lora", "lorita"}


def variants_of(path: Path) -> list:
    return [None] + list(yaml.safe_load(path.read_text()).get("variants") or {})


def small(**extra) -> dict:
    """A minimal valid spec as a dict."""
    spec = {"name": "t", "epochs": 10, "retentions": [0.1, 0.2, 1.0],
            "techniques": {"adamq3r": {"lr": 1e-3, "lmbda": {"loguniform": [0.1, 10]},
                                       "target_rank": {"choice": [0.1, 0.2]}, "period": {"choice": [5, 10]}},
                           "adamw": {"lr": {"loguniform": [1e-4, 1e-2]}, "weight_decay": {"uniform": [0, 0.1]}},
                           "lorita": {"depth": {"int": [2, 4]}}},
            "scheduler": {"kind": "asha", "grace_period": 2}}
    spec.update(extra)
    return spec


def write(tmp_path, raw, name="s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


# ---- the shipped specs ---------------------------------------------------------------------------
def test_the_five_shipped_specs_exist():
    assert {p.name for p in SHIPPED} >= {"digits_vit.yaml", "cifar10_vit_tiny.yaml", "cifar100_vit_base.yaml",
                                         "imagenet_vit_base.yaml", "glue_roberta.yaml"}


@pytest.mark.parametrize("path,variant", [(p, v) for p in SHIPPED for v in variants_of(p)],
                         ids=lambda x: x.name if isinstance(x, Path) else str(x))
def test_every_shipped_spec_and_variant_loads(path, variant):
    spec = load_spec(path, variant=variant)
    assert spec.spaces and spec.source == str(path)
    for technique, space in spec.spaces.items():     # every technique's low corner is a valid trial
        cfg = spec.trial_config(technique, {p: d.first() for p, d in space.items()})
        assert cfg.technique.name == technique and cfg.train.epochs == spec.epochs
    if spec.searcher.kind == "grid":
        assert grid_points(spec.spaces)


def test_digits_default_searches_all_five_techniques():
    spec = load_spec(SPACES / "digits_vit.yaml")
    assert set(spec.spaces) == FIVE
    assert spec.data.name == "digits" and (spec.model.depth, spec.model.width) == (4, 64)
    assert spec.retentions == [0.05, 0.1, 0.2, 0.4, 1.0] and spec.epochs == 24 and spec.train.eval_every == 4
    assert (spec.scheduler.kind, spec.scheduler.grace_period, spec.searcher.kind) == ("asha", 8, "tpe")
    assert spec.scheduler.min_samples == 2 and (spec.confirm.top, spec.confirm.seeds) == (1, 2)
    assert all(n >= 2 for n in spec.allocation().values())      # with min_samples 2, two of each complete
    q = spec.spaces["adamq3r"]
    assert q["lmbda"].kind == "loguniform" and q["target_rank"].values == [0.05, 0.1, 0.2]
    assert q["period"].values == [5, 10]


def test_cifar10_grid_variant_is_table_1():
    spec = load_spec(SPACES / "cifar10_vit_tiny.yaml", variant="grid")
    assert (spec.searcher.kind, spec.scheduler.kind) == ("grid", "fifo")
    assert spec.retentions == [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 1.0] and spec.epochs == 100
    counts = {t: sum(p["technique"] == t for p in grid_points(spec.spaces)) for t in spec.spaces}
    assert counts == {"adamq3r": 6, "adamw": 1, "lora": 3, "lorita": 4}


# ---- trial configs, overrides, round trips -------------------------------------------------------
def test_trial_config_carries_params_and_the_sweep_settings():
    spec = from_dict(small(resources={"cpu": 2, "gpu": 0.25}, seed=3, train={"eval_every": 2}))
    cfg = spec.trial_config("adamq3r", {"lmbda": 0.5, "target_rank": 0.2, "period": 10})
    assert isinstance(cfg, TrialSpec)
    t = cfg.technique
    assert (t.name, t.lr, t.lmbda, t.target_rank, t.period) == ("adamq3r", 1e-3, 0.5, 0.2, 10)
    tr = cfg.train
    assert (tr.epochs, tr.retentions, tr.seed, tr.threads, tr.device, tr.eval_every) == (10, [0.1, 0.2, 1.0], 3, 2,
                                                                                         "cuda", 2)
    assert from_dict(small()).trial_config("adamw", {"lr": 1e-3}).train.device == "cpu"


def test_trial_config_rejects_bad_params():
    spec = from_dict(small())
    with pytest.raises(SpecError, match=r"'adamw' takes no parameter\(s\) \['lmbda'\]"):
        spec.trial_config("adamw", {"lmbda": 1.0})
    with pytest.raises(SpecError, match=r"target_rank must be .* but got 2\.0"):
        spec.trial_config("adamq3r", {"target_rank": 2.0})
    with pytest.raises(SpecError, match="'lora' is not in this sweep"):
        spec.trial_config("lora", {})


def test_overrides_and_variants(tmp_path):
    raw = small(variants={"grid": {"searcher": {"kind": "grid"}, "scheduler": {"kind": "fifo"},
                                   "techniques": {"adamq3r": {"lmbda": {"choice": [0.1, 1.0]}},
                                                  "adamw": None, "lorita": None}}})
    path = write(tmp_path, raw)
    spec = load_spec(path, ["num_samples=4", "epochs=3", "train.eval_every=1",
                            "techniques.adamq3r.lmbda={loguniform: [0.1, 1]}",
                            "scheduler.reduction_factor=2", "tracking.experiment=exp", "techniques.adamw.lr=1e-3"])
    assert (spec.num_samples, spec.epochs, spec.scheduler.reduction_factor) == (4, 3, 2.0)
    assert spec.spaces["adamq3r"]["lmbda"] == LogUniform(loguniform=[0.1, 1.0])
    assert spec.spaces["adamw"]["lr"] == Fixed(value=1e-3)     # "1e-3" read as a float
    assert spec.experiment_name == "exp" and spec.max_t == 3
    grid = load_spec(path, variant="grid")
    assert list(grid.spaces) == ["adamq3r"] and grid.searcher.kind == "grid"
    assert grid.spaces["adamq3r"]["lmbda"].values == [0.1, 1.0] and grid.name == "t"
    with pytest.raises(SpecError, match=r"no variant 'nope'; its variants: \['grid'\]"):
        load_spec(path, variant="nope")
    with pytest.raises(SpecError, match="key=value"):
        load_spec(path, ["num_samples"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_to_dict_round_trips(path, tmp_path):
    spec = load_spec(path)
    assert from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    dump_spec(spec, tmp_path / "again.yaml")
    again = load_spec(tmp_path / "again.yaml")
    assert again.to_dict() == spec.to_dict() and again.train == spec.train and again.spaces == spec.spaces


def test_objective_and_metrics():
    spec = from_dict(small())
    assert spec.objective_metrics() == ["objective"]
    assert from_dict(small(searcher={"kind": "multi"})).objective_metrics() == ["acc@0.1", "acc@0.2"]
    assert from_dict(small(objective="acc@0.20")).objective == "acc@0.2"
    m = {"acc@0.1": 0.5, "acc@0.2": 0.7, "acc@1": 0.9, "acc": 0.9}
    assert objective_value(m, "mean", [0.1, 0.2, 1.0]) == pytest.approx(0.6)
    assert objective_value(m, "mean", [0.1, 0.2, 0.4, 1.0]) == pytest.approx(0.6)   # levels present only
    assert objective_value(m, "acc@0.2", [0.1, 0.2, 1.0]) == 0.7


# ---- errors: each names the file, the field and the value ----------------------------------------
BAD = [
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]; known: \['name', 'data'"),
    ({"techniques": {"adamq3r": {}, "sgd": {}}}, r"techniques: unknown key\(s\) \['sgd'\]; known: .*'lorita'"),
    ({"techniques": {"adamw": {"lmbda": 1.0}}}, r"techniques.adamw: unknown key\(s\) \['lmbda'\]; known: \['lr', "
                                                r"'weight_decay', 'finetune'\]"),
    ({"techniques": {"adamq3r": {"lmbda": {"loguniform": [0, 1]}}}},
     r"techniques.adamq3r.lmbda: loguniform needs 0 < low < high, but got \[0.0, 1.0\]"),
    ({"techniques": {"adamq3r": {"lr": {"uniform": [0.1, 0.01]}}}},
     r"techniques.adamq3r.lr: uniform needs low < high, but got \[0.1, 0.01\]"),
    ({"techniques": {"adamq3r": {"target_rank": {"choice": [0.1, 2.0]}}}},
     r"techniques.adamq3r.target_rank must be a fraction in \(0, 1\] or an int rank >= 1, but got 2.0 "
     r"\(in choice \[0.1, 2.0\]\)"),
    ({"techniques": {"adamq3r": {"lr": {"loguniform": [-1, 1]}}}}, r"techniques.adamq3r.lr: loguniform needs 0 < low"),
    ({"techniques": {"adamq3r": {"lmbda": {"uniform": [-1, 1]}}}},
     r"techniques.adamq3r.lmbda must be greater than or equal to 0, but got -1.0 \(a bound of uniform"),
    ({"techniques": {"adamq3r": {"period": {"uniform": [1, 10]}}}},
     r"techniques.adamq3r.period must be an integer: use int, logint or choice, not uniform \[1.0, 10.0\]"),
    ({"techniques": {"lorita": {"depth": 0}}}, r"techniques.lorita.depth must be greater than or equal to 1, but got 0"),
    ({"techniques": {"adamq3r": {"svd": {"choice": ["warm", "fast"]}}}},
     r"techniques.adamq3r.svd must be 'warm' or 'exact', but got 'fast' \(in choice"),
    ({"techniques": {"adamq3r": {"lmbda": {"normal": [0, 1]}}}},
     r"techniques.adamq3r.lmbda must be a value or a distribution, .* but got \{'normal': \[0, 1\]\}"),
    ({"techniques": {"adamq3r": {"target_rank": [0.1, 0.2]}}}, r"target_rank: a list is not a value; write "
                                                               r"\{choice: \[0.1, 0.2\]\}"),
    ({"objective": "acc@0.3"}, r"objective: must be 'mean' or 'acc@p' .* but got 'acc@0.3'"),
    ({"searcher": {"kind": "grid"}}, r"techniques.adamq3r.lmbda must be a choice or a fixed value for searcher "
                                     r"grid, but got \{'loguniform': \[0.1, 10.0\]\}"),
    ({"searcher": {"kind": "bayes"}}, r"searcher.kind must be 'tpe', 'gp', 'multi', 'random' or 'grid', but got 'bayes'"),
    ({"scheduler": {"kind": "asha", "grace_period": 20}}, r"scheduler.grace_period must be <= max_t \(10.*"
                                                          r"but got 20"),
    ({"scheduler": {"reduction_factor": 1}}, r"scheduler.reduction_factor must be greater than 1, but got 1"),
    ({"scheduler": {"kind": "hyperband"}}, r"scheduler.kind must be 'asha' or 'fifo', but got 'hyperband'"),
    ({"scheduler": {"max_t": 50}}, r"scheduler.max_t must be null or in \[1, epochs=10\], but got 50"),
    ({"scheduler": {"patience": 3}}, r"scheduler: unknown key\(s\) \['patience'\]"),
    ({"resources": {"cpu": 0}}, r"resources.cpu must be greater than 0, but got 0"),
    ({"resources": {"gpu": -1}}, r"resources.gpu must be greater than or equal to 0, but got -1"),
    ({"resources": {"gpu": 1.5}}, r"resources.gpu must be >= 0 .* but got 1.5"),
    ({"num_samples": 0}, r"num_samples must be greater than or equal to 1, but got 0"),
    ({"max_concurrent": "two"}, r"max_concurrent must be a valid integer, but got 'two'"),
    ({"retentions": [0.1, 1.5]}, r"retentions must be less than or equal to 1, but got 1.5"),
    ({"retentions": [0.1, 0.10, 1.0]}, r"retentions must be distinct, but got \[0.1, 0.1, 1.0\]"),
    ({"data": {"name": "mnist"}}, r"data.name must be one of .* but got 'mnist'"),
    ({"model": {"kind": "cnn"}}, r"model.kind must be 'vit', 'hf', 'timm' or 'python', but got 'cnn'"),
    ({"train": {"batchsize": 3}}, r"train: unknown key\(s\) \['batchsize'\]"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m[:40] for _, m in BAD])
def test_spec_errors_name_file_field_and_value(tmp_path, change, message):
    raw = small()
    for key, value in change.items():
        if key == "techniques" and "sgd" not in value:
            raw[key] = {**raw[key], **value}
        elif isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path = write(tmp_path, raw, "broken.yaml")
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ") or str(info.value).startswith(f"{path} [")


def test_malformed_yaml_missing_file_and_missing_keys(tmp_path):
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML"):
        load_spec(write(tmp_path, "name: [unclosed\n", "bad.yaml"))
    with pytest.raises(SpecError, match=r"no sweep spec at .*nowhere.yaml"):
        load_spec(tmp_path / "nowhere.yaml")
    with pytest.raises(SpecError, match=r"list.yaml: a sweep spec must be a mapping, but got list"):
        load_spec(write(tmp_path, "- 1\n", "list.yaml"))
    with pytest.raises(SpecError, match=r"nameless.yaml: name Field required"):
        load_spec(write(tmp_path, {"techniques": {"adamw": {}}}, "nameless.yaml"))


# ---- the search space ----------------------------------------------------------------------------
def test_optuna_space_suggests_within_bounds_for_the_chosen_technique_only():
    spec = from_dict(small())
    define = OptunaSpace(spec.spaces)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        constants = define(trial)
        config = {**trial.params, **constants}
        technique, params = split_config(config)
        seen.add(technique)
        assert all(k == "technique" or k.startswith(f"{technique}.") for k in config)
        for name, value in params.items():
            d = spec.spaces[technique][name]
            if d.kind == "fixed":
                assert value == d.values[0] and f"{technique}.{name}" in constants
            elif d.kind == "choice":
                assert value in d.values
            else:
                assert d.low <= value <= d.high
        assert set(params) == set(spec.spaces[technique])
        spec.trial_config(technique, params)
        study.tell(trial, 0.5)
    assert seen == set(spec.spaces)
    one = from_dict(small(techniques={"adamw": {"lr": {"loguniform": [1e-4, 1e-2]}, "weight_decay": 0.0}}))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert OptunaSpace(one.spaces)(trial) == {"technique": "adamw", "adamw.weight_decay": 0.0}
    assert list(trial.params) == ["adamw.lr"] and 1e-4 <= trial.params["adamw.lr"] <= 1e-2


def test_grid_points_cross_the_choices_of_each_technique():
    spec = from_dict(small(techniques={
        "adamq3r": {"lr": 1e-3, "lmbda": {"choice": [0.1, 1.0, 10.0]}, "target_rank": {"choice": [0.1, 0.2]}},
        "lorita": {"depth": {"choice": [2, 3]}}}, searcher={"kind": "grid"}))
    points = grid_points(spec.spaces)
    assert len(points) == 3 * 2 + 2
    assert points[0] == {"technique": "adamq3r", "adamq3r.lr": 1e-3, "adamq3r.lmbda": 0.1, "adamq3r.target_rank": 0.1}
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert grid_points(spec.spaces) == points                                     # a stable order
    assert "(6 grid points)" in describe(spec.spaces, grid=True).splitlines()[0]


def test_split_config_inverts_the_naming():
    assert split_config({"technique": "adamq3r", "adamq3r.lmbda": 0.5, "adamq3r.period": 5,
                         "lorita.depth": 2, "other": 1}) == ("adamq3r", {"lmbda": 0.5, "period": 5})
    assert split_config({"point": {"technique": "lora", "lora.target_rank": 0.1}}) == ("lora", {"target_rank": 0.1})
    assert split_config({"adamw.lr": 1e-3}) == ("adamw", {"lr": 1e-3})
    np = pytest.importorskip("numpy")
    technique, params = split_config({"technique": "lorita", "lorita.depth": np.int64(3)})
    assert type(params["depth"]) is int


def test_describe_has_one_line_per_technique():
    spec = load_spec(SPACES / "digits_vit.yaml")
    lines = describe(spec.spaces).splitlines()
    assert [line.split(":")[0] for line in lines] == list(spec.spaces)
    assert "lmbda ~ loguniform[0.3, 30]" in lines[0] and "period in {5, 10}" in lines[0]


def test_an_override_error_names_the_override_and_duplicate_keys_are_rejected(tmp_path):
    path = write(tmp_path, small())
    with pytest.raises(SpecError) as info:
        load_spec(path, ["epochs=5", "techniques.adamq3r.lmbda={loguniform: [1, 0.5]}"])
    assert str(info.value).startswith(f"{path} (--set techniques.adamq3r.lmbda={{loguniform: [1, 0.5]}}): "
                                      f"techniques.adamq3r.lmbda: loguniform needs 0 < low < high")
    text = "name: t\ntechniques:\n  adamq3r:\n    lmbda: {loguniform: [0.1, 10]}\n    lmbda: 1.0\n"
    with pytest.raises(SpecError, match=r"dup.yaml: not valid YAML: .*duplicate key 'lmbda' \(first on line 4\)"):
        load_spec(write(tmp_path, text, "dup.yaml"))
    with pytest.raises(SpecError, match=r"tag.yaml: not valid YAML: .*python/object"):
        load_spec(write(tmp_path, "name: !!python/object/apply:os.system ['true']\ntechniques: {adamw: {}}\n",
                        "tag.yaml"))


def test_json_schema_lists_each_technique_and_the_distribution_kinds():
    schema = json.loads(json_schema("sweep"))
    assert {"name", "techniques", "scheduler", "searcher", "variants"} <= set(schema["properties"])
    assert schema["required"] == ["name", "techniques"]
    spaces = schema["$defs"]["TechniqueSpaces"]["properties"]
    assert list(spaces) == ["adamq3r", "adam_q3r_loss", "adamw", "lora", "lorita"]
    assert set(schema["$defs"]["LoritaSpace"]["properties"]) == {"lr", "weight_decay", "finetune", "depth", "alpha",
                                                                    "lorita_form"}
    assert {"LogUniform", "Uniform", "IntRange", "LogInt", "Choice"} <= set(schema["$defs"])


def test_transfer_spec_needs_its_checkpoint_and_makes_init_absolute(tmp_path):
    from tuning.sweep.driver import preflight, resolve_paths

    spec = load_spec(SPACES / "transfer_digits.yaml", ["model.init=nowhere/pre.safetensors"])
    assert spec.data.classes == [5, 6, 7, 8, 9] and spec.techniques.adamq3r.finetune is True
    with pytest.raises(FileNotFoundError, match="model.init 'nowhere/pre.safetensors' does not exist.*--pretrain-only"):
        preflight(spec)
    resolved = resolve_paths({"model": {"init": "ckpt/pre.safetensors"}}, tmp_path)
    assert resolved["model"]["init"] == str((tmp_path / "ckpt" / "pre.safetensors").resolve())


# ---- the metric ----------------------------------------------------------------------------------
def test_the_default_metric_is_accuracy_with_todays_keys():
    spec = from_dict(small())
    assert (spec.score.name, spec.score.mode, spec.score.key) == ("accuracy", "max", "acc")
    assert spec.objective == "mean" and spec.train.metric == spec.metric
    assert from_dict(small(searcher={"kind": "multi"})).objective_metrics() == ["acc@0.1", "acc@0.2"]
    assert from_dict(small(objective="acc@0.20")).objective == "acc@0.2"


def test_a_min_metric_names_its_keys_objective_and_trials(tmp_path):
    spec = load_spec(write(tmp_path, small(metric={"name": "val_loss", "mode": "min"}, objective="val_loss@0.2")),
                     ["searcher.kind=multi"])
    assert (spec.score.mode, spec.objective, spec.objective_metrics()) == ("min", "val_loss@0.2",
                                                                          ["val_loss@0.1", "val_loss@0.2"])
    assert spec.trial_config("adamw", {"lr": 1e-3}).train.metric.name == "val_loss"
    again = from_dict(spec.to_dict())
    assert again.score == spec.score and again.to_dict() == spec.to_dict()
    assert from_dict(small(metric="val_loss")).score.mode == "min"               # the name alone: its own mode
    assert from_dict(small(train={"metric": {"name": "val_loss"}})).score.name == "val_loss"   # train's serves


@pytest.mark.parametrize("extra, message", [
    ({"metric": {"name": "val_loss", "mode": "down"}}, "metric.mode must be 'max' or 'min', but got 'down'"),
    ({"metric": {"name": "accuracy", "mode": "min"}}, "metric: mode of accuracy is 'max' (the recipe's), but got 'min'"),
    ({"metric": {"name": "f1", "mode": "max"}}, "metric.name must be one the built-in recipe computes"),
    ({"metric": {"name": "bleu"}}, "metric: mode must be set (max or min) for metric 'bleu'"),
    ({"metric": {"name": "acc"}}, "accuracy is named 'accuracy'"),
    ({"metric": {"name": "val_loss"}, "objective": "acc@0.2"}, "objective: must be 'mean' or 'val_loss@p'"),
])
def test_a_bad_metric_is_one_line_naming_it(extra, message):
    with pytest.raises(SpecError) as err:
        from_dict(small(**extra))
    assert message in str(err.value) and "\n" not in str(err.value)
