"""The benchmark scripts run (a smoke test of the script, not a timing).

The scripts that only train and time in their own process run in this one (``run_script``: no new
interpreter importing torch and timm); the ones that start processes (a pool) run in a subprocess."""
import random
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
pytestmark = pytest.mark.slow


def run_script(capsys, name: str, *argv: str) -> str:
    """Run ``benchmarks/<name>`` as ``__main__`` in this process with ``argv``; its stdout. The torch threads and
    the seeds it sets are restored, and the benchmarks/ folder it imports from (as a script) is taken off again."""
    saved = torch.get_num_threads(), torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    argv0, modules = sys.argv, set(sys.modules)
    sys.argv = [str(BENCHMARKS / name), *argv]
    sys.path.insert(0, str(BENCHMARKS))
    capsys.readouterr()
    try:
        runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    finally:
        sys.argv = argv0
        sys.path.remove(str(BENCHMARKS))
        for module in set(sys.modules) - modules:           # benchmarks/*.py imported by their plain names
            if "." not in module and Path(getattr(sys.modules[module], "__file__", None) or "/").parent == BENCHMARKS:
                del sys.modules[module]
        torch.set_num_threads(saved[0])
        torch.random.set_rng_state(saved[1])
        random.setstate(saved[2])
        np.random.set_state(saved[3])
    return capsys.readouterr().out


def test_optimizer_overhead_smoke(capsys):
    out = run_script(capsys, "optimizer_overhead.py", "--smoke-test", "--threads", "1")
    assert [line.split(": ratio")[0] for line in out.splitlines() if ": ratio" in line] == ["batch    2"] * 2
    assert "wall clock" in out and "cpu clock" in out and "batch    2: FLOP floor" in out


def test_step_breakdown_smoke(capsys):
    out = run_script(capsys, "step_breakdown.py", "--smoke-test", "--threads", "1")
    assert "step ratio" in out and "fits" in out
    assert "adamq3r step, reweighting" in out and "adamq3r step, apply only" in out


def test_scoring_cost_smoke(capsys):
    out = run_script(capsys, "scoring_cost.py", "--smoke-test", "--threads", "1")
    assert out.count("ratio") == 2


def test_trial_cost_smoke(capsys):
    """A short LoRA trial in its own process, and again against this same checkout: the shares and the ratio line."""
    out = run_script(capsys, "trial_cost.py", "--smoke-test", "--compare", str(ROOT))
    rows = [line.split()[0] for line in out.splitlines() if "learning" in line and not line.startswith(" ")]
    assert rows == ["lora"] and out.count("compare: total") == 1
    assert out.count("metrics identical: True") == 1 and "eval passes" in out and "eval merge" in out


def test_warm_eps_smoke(capsys):
    """Per width and corner one row, with the default's shares and its cost against one warm iteration."""
    out = run_script(capsys, "warm_eps.py", "--smoke-test", "--width", "64", "128", "--threads", "1")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["64"], ["128"])]
    assert [r[:4] for r in rows] == [["64", "30", "0.003", "0.2"], ["128", "30", "0.003", "0.2"]]
    assert all(r[-4].endswith("x") and r[-1].endswith("]") for r in rows)
    assert "worst" in out


@pytest.fixture(scope="module")
def digits_techniques_out():
    """One smoke run of digits_techniques.py for both of its tests: the AdamW reference, AdamQ3R and both LoRA forms,
    in a pool of one process (each process pays its imports, scikit-learn's for the data among them)."""
    out = subprocess.run([sys.executable, str(BENCHMARKS / "digits_techniques.py"), "--smoke-test",
                          "--techniques", "adamw", "adamq3r", "lora", "lora-paper", "--jobs", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.xdist_group("digits_techniques")
def test_digits_techniques_smoke(digits_techniques_out):
    lines = digits_techniques_out.splitlines()
    means = [line.split()[0] for line in lines if line.split()[1:2] == ["mean"]]
    assert means == ["adamw", "adamq3r", "lora", "lora-paper"]
    assert [line.split()[1] for line in lines if line.startswith("ratio ")] == ["adamq3r/adamw", "lora/adamw",
                                                                               "lora-paper/adamw"]


@pytest.mark.xdist_group("digits_techniques")
def test_digits_techniques_lora_forms(digits_techniques_out):
    """lora-paper is a row of its own and trains the paper code's form: no bias, so fewer parameters stored."""
    from benchmarks.digits_techniques import config
    assert config("lora", 1, 0).technique.lora_form == "factorized"
    paper = config("lora-paper", 1, 3)
    assert (paper.technique.name, paper.technique.lora_form, paper.train.seed) == ("lora", "paper", 3)
    params = {line.split()[0]: [int(n) for n in line.split()[2:]] for line in digits_techniques_out.splitlines()
              if line.split()[1:2] == ["param"]}
    assert list(params) == ["adamw", "adamq3r", "lora", "lora-paper"]
    assert all(paper < factorized for paper, factorized in zip(params["lora-paper"], params["lora"]))


def test_transfer_digits_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(BENCHMARKS / "transfer_digits.py"), "--smoke-test",
                          "--cache", str(tmp_path), "--jobs", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = [line.split(" | ")[0].strip("| ") for line in out.stdout.splitlines() if line.startswith("| ")]
    for method in ("dense", "lora", "adamq3r", "adam_q3r_loss", "adamq3r/paper", "adam_q3r_loss/paper"):
        assert method in rows
    assert "eps trajectory" in out.stdout and list(tmp_path.glob("*.safetensors"))


def test_sweep_efficiency_replay_smoke():
    out = subprocess.run([sys.executable, str(BENCHMARKS / "sweep_efficiency.py"), "replay", "--smoke-test"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [line for line in lines if line.startswith("default ") and "[" in line]
    assert any("hypervolume ratio" in line for line in lines) and rows      # the table, with intervals
    assert "noise floor" in out.stdout
