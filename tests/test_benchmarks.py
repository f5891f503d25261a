"""The benchmark scripts run (a smoke test of the script, not a timing)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_optimizer_overhead_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "optimizer_overhead.py"), "--smoke-test", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "batch    2: ratio" in out.stdout


def test_step_breakdown_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_breakdown.py"), "--smoke-test", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "step ratio" in out.stdout and "fits" in out.stdout


def test_scoring_cost_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scoring_cost.py"), "--smoke-test", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ratio") == 2


def test_digits_techniques_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "digits_techniques.py"), "--smoke-test"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    means = [line.split()[0] for line in out.stdout.splitlines() if line.split()[1:2] == ["mean"]]
    assert means == ["adamw", "adamq3r"] and "ratio adamq3r/adamw" in out.stdout


def test_digits_techniques_lora_forms():
    """lora-paper is a row of its own and trains the paper code's form: no bias, so fewer parameters stored."""
    from benchmarks.digits_techniques import config
    assert config("lora", 1, 0).technique.lora_form == "factorized"
    paper = config("lora-paper", 1, 3)
    assert (paper.technique.name, paper.technique.lora_form, paper.train.seed) == ("lora", "paper", 3)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "digits_techniques.py"), "--smoke-test",
                          "--techniques", "lora", "lora-paper", "--jobs", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    params = {line.split()[0]: [int(n) for n in line.split()[2:]] for line in out.stdout.splitlines()
              if line.split()[1:2] == ["param"]}
    assert list(params) == ["lora", "lora-paper"]
    assert all(paper < factorized for paper, factorized in zip(params["lora-paper"], params["lora"]))


def test_transfer_digits_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "transfer_digits.py"), "--smoke-test",
                          "--cache", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = [line.split(" | ")[0].strip("| ") for line in out.stdout.splitlines() if line.startswith("| ")]
    for method in ("dense", "lora", "adamq3r", "adam_q3r_loss", "adamq3r/paper", "adam_q3r_loss/paper"):
        assert method in rows
    assert "eps trajectory" in out.stdout and list(tmp_path.glob("*.safetensors"))


def test_sweep_efficiency_replay_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_efficiency.py"), "replay", "--smoke-test"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [line for line in lines if line.startswith("default ") and "[" in line]
    assert any("hypervolume ratio" in line for line in lines) and rows      # the table, with intervals
    assert "noise floor" in out.stdout
