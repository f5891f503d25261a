"""Trial specs: typed (pydantic), validated when loaded, errors that name the file, the field and the value."""
import json

import pytest

from tuning.trial import spec as config
from tuning.trial.spec import SpecError


def write(tmp_path, text, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "technique:\n  name: adamw\n  lr: 3e-4\ntrain:\n  epochs: 3\n")
    cfg = config.load(p, ["technique.lmbda=0.5", "train.retentions=[0.1, 1.0]", "technique.target_rank=4"])
    assert cfg.technique.name == "adamw" and cfg.technique.lr == 3e-4 and cfg.technique.lmbda == 0.5
    assert cfg.train.epochs == 3 and cfg.train.retentions == [0.1, 1.0]
    assert cfg.technique.target_rank == 4 and isinstance(cfg.technique.target_rank, int)
    assert cfg.data.name == "digits"
    assert cfg.flat()["technique.period"] == 5


def test_round_trip_through_dump(tmp_path):
    cfg = config.from_dict({"technique": {"lmbda": 2.0}})
    config.dump(cfg, tmp_path / "out.yaml")
    assert config.load(tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize("text, expected", [
    ("techniqe:\n  lr: 1\n", "unknown key(s) ['techniqe']; known: ['data', 'model', 'technique', 'train', 'function', 'code_dir']"),
    ("technique:\n  lamda: 1\n", "technique: unknown key(s) ['lamda']; known: ['name', 'lr'"),
    ("technique:\n  lr: fast\n", "technique.lr must be a valid number, but got 'fast'"),
    ("technique:\n  lr: 0\n", "technique.lr must be greater than 0, but got 0"),
    ("technique:\n  name: sgd\n", "technique.name must be 'adamq3r', 'adam_q3r_loss', 'adamw', 'lora' or 'lorita', "
                                  "but got 'sgd'"),
    ("technique:\n  period: 0\n", "technique.period must be greater than or equal to 1, but got 0"),
    ("technique:\n  lmbda: -1\n", "technique.lmbda must be greater than or equal to 0, but got -1"),
    ("technique:\n  target_rank: 1.5\n", "technique.target_rank must be a fraction in (0, 1] or an int rank >= 1, "
                                         "but got 1.5"),
    ("train:\n  retentions: [0.1, 2]\n", "train.retentions must be less than or equal to 1, but got 2"),
    ("train:\n  epochs: true\n", "train.epochs must be a valid integer, but got True"),
    ("train:\n  epochs: '3'\n", "train.epochs must be a valid integer, but got '3'"),
    ("model:\n  kind: cnn\n", "model.kind must be 'vit', 'hf', 'timm' or 'python', but got 'cnn'"),
    ("data:\n  name: mnist\n", "data.name must be one of ['digits', 'cifar10', 'cifar100', 'imagefolder', 'glue', "
                               "'python'] or glue/<task>, but got 'mnist'"),
    ("- a\n- b\n", "a trial spec must be a mapping, but got list"),
    ("technique: [1, 2\n", "not valid YAML"),
    ("technique:\n  lmbda: {loguniform: [0.1, 1]}\n  lmbda: 0.5\n", "duplicate key 'lmbda' (first on line 2)"),
    ("technique: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("technique: !!python/object:subprocess.Popen {args: ['true']}\n",
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:subprocess.Popen'"),
])
def test_errors_name_file_field_and_value(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        config.load(p)
    assert expected in str(err.value)
    assert str(err.value).startswith(f"{p}: ") and "\n" not in str(err.value)


def test_an_error_in_an_override_names_the_override(tmp_path):
    p = write(tmp_path, "technique:\n  lr: 1e-3\n")
    with pytest.raises(SpecError) as err:
        config.load(p, ["train.epochs=4", "technique.lr=0"])
    assert str(err.value).startswith(f"{p} (--set technique.lr=0): technique.lr must be greater than 0")
    with pytest.raises(SpecError) as err:                  # an error in the file itself still names the file alone
        config.load(write(tmp_path, "technique:\n  lr: -1\n", "f.yaml"), ["train.epochs=4"])
    assert str(err.value).startswith(f"{tmp_path / 'f.yaml'}: technique.lr")


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(SpecError, match="no trial spec at"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="--set takes key=value .* but got 'lmbda'"):
        config.load(write(tmp_path, "{}\n"), ["lmbda"])


def test_technique_names_match_the_registry_and_datasets_the_loaders():
    from tuning.trial.data import DATASETS
    from tuning.trial.techniques import TECHNIQUES

    assert set(config.TECHNIQUE_NAMES) == set(TECHNIQUES)
    assert set(config.DATASET_NAMES) == set(DATASETS)


def test_json_schema_describes_the_sections():
    from tuning.spec.sweep import json_schema

    schema = json.loads(json_schema("trial"))
    assert set(schema["properties"]) == {"data", "model", "technique", "train", "function", "code_dir"}
    technique = schema["$defs"]["TechniqueSpec"]
    assert technique["additionalProperties"] is False
    assert technique["properties"]["name"]["enum"] == list(config.TECHNIQUE_NAMES)
    assert technique["properties"]["lr"]["exclusiveMinimum"] == 0
