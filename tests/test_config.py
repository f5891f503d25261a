"""Trial specs: typed, validated when loaded, errors that name the file, the field and the value."""
import pytest

from q3r import config
from q3r.config import ConfigError


def write(tmp_path, text, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "technique:\n  name: adamw\n  lr: 3.0e-4\ntrain:\n  epochs: 3\n")
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
    ("techniqe:\n  lr: 1\n", "unknown section(s) ['techniqe']"),
    ("technique:\n  lamda: 1\n", "technique: unknown key(s) ['lamda']"),
    ("technique:\n  lr: fast\n", "technique.lr must be float, but got 'fast'"),
    ("technique:\n  period: 0\n", "technique.period must be >= 1, but got 0"),
    ("technique:\n  lmbda: -1\n", "technique.lmbda must be >= 0, but got -1"),
    ("technique:\n  target_rank: 1.5\n", "technique.target_rank must be a fraction in (0, 1]"),
    ("train:\n  retentions: [0.1, 2]\n", "train.retentions must hold fractions in (0, 1], but got 2"),
    ("train:\n  epochs: true\n", "train.epochs must be int, but got True"),
    ("model:\n  kind: cnn\n", "model.kind must be one of ['vit', 'hf'], but got 'cnn'"),
    ("- a\n- b\n", "must be a mapping of sections"),
    ("technique: [1, 2\n", "not valid YAML"),
])
def test_errors_name_file_field_and_value(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(p)
    assert expected in str(err.value)
    assert str(p) in str(err.value)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="no trial spec at"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="section.key=value, but got 'lmbda'"):
        config.load(write(tmp_path, "{}\n"), ["lmbda"])
