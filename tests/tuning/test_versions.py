"""The tested version ranges of Ray, Optuna and MLflow: declared with upper bounds, checked where a sweep
starts, one line outside them."""
import importlib.metadata as metadata
import sys
import textwrap

import pytest
from packaging.version import Version

from tuning import cli
from tuning.sweep import versions
from tuning.sweep.versions import VersionError, check_versions, declared

PYPROJECT = textwrap.dedent("""
    [project]
    name = "q3r-tune"
    dependencies = ["torch>=2.4", "ray[tune]>=2.40,<2.61", "optuna>=4.0,<5.1", "mlflow>=2.16,<3.18",
                    "pytest>=8; extra == 'dev'"]
""")


def faked(**found):
    """The installed versions, with some replaced (``ray="2.70.0"``; None: not installed)."""
    def version(name):
        if name in found:
            if found[name] is None:
                raise metadata.PackageNotFoundError(name)
            return found[name]
        return metadata.version(name)
    return version


@pytest.fixture
def pyproject(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT)
    return path


def test_every_checked_package_is_declared_with_an_upper_bound_that_the_installed_one_meets():
    requirements = declared()
    assert set(requirements) == {"ray", "optuna", "mlflow"}
    for name, requirement in requirements.items():
        assert any(s.operator == "<" for s in requirement.specifier), f"{name} has no upper bound: {requirement}"
        assert Version(metadata.version(name)) in requirement.specifier
    check_versions()                                             # the installed versions pass


def test_a_version_outside_the_range_is_one_line_saying_what_to_install(pyproject):
    with pytest.raises(VersionError) as e:
        check_versions(faked(ray="2.70.0"), pyproject)
    assert str(e.value) == ("ray 2.70.0 is outside the range q3r-tune was tested with (>=2.40,<2.61): "
                            "pip install 'ray[tune]>=2.40,<2.61'")
    with pytest.raises(VersionError, match=r"^optuna 3\.6\.1 is outside .* \(>=4\.0,<5\.1\): pip install "
                                           r"'optuna>=4\.0,<5\.1'; mlflow is not installed: pip install "
                                           r"'mlflow>=2\.16,<3\.18'$"):
        check_versions(faked(optuna="3.6.1", mlflow=None), pyproject)
    with pytest.raises(VersionError, match=r"^ray 2\.61\.0rc1 is outside"):          # a pre-release of the next
        check_versions(faked(ray="2.61.0rc1"), pyproject)
    check_versions(faked(ray="2.40.0", optuna="5.0.9", mlflow="3.17.2"), pyproject)   # the edges inside


def test_the_installed_metadata_serves_without_a_checkout(tmp_path):
    requirements = declared(tmp_path / "no-pyproject.toml")
    assert set(requirements) == {"ray", "optuna", "mlflow"} and requirements["ray"].extras == {"tune"}


@pytest.mark.parametrize("argv", [["sweep", "nowhere.yaml"], ["resume", "tiny"], ["confirm", "tiny"]])
def test_a_sweep_does_not_start_outside_the_range(argv, monkeypatch, capsys):
    monkeypatch.setattr(versions, "installed_version", faked(ray="2.70.0"))
    for module in [m for m in sys.modules if m == "tuning.sweep.driver"]:
        monkeypatch.delitem(sys.modules, module)                 # to see that the check comes first
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"q3r-tune {argv[0]}: ray 2.70.0 is outside the range q3r-tune was tested with (") \
        and err.count("\n") == 1 and "pip install 'ray[tune]>=" in err
    assert "tuning.sweep.driver" not in sys.modules
