"""benchmarks/distributed.py runs (a smoke test of the script at 1 and 2 workers, not a timing)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_distributed_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "distributed.py"), "--smoke-test"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("device: cpu (gloo)")
    assert any(line.startswith("2 worker(s) reweight share") and "r1 " in line for line in lines)
    ratios = [line for line in lines if line.startswith("per-rank reweighting ratio, 2 workers")]
    assert [line.split(":")[0].split()[-1] for line in ratios] == ["share", "broadcast"]


def test_distributed_parts_smoke():
    """benchmarks/distributed_parts.py runs, with and without the parts swapped (not a timing)."""
    for extra in ([], ["--swap"]):
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "distributed_parts.py"), "--smoke-test", *extra],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert ("parts swapped" in lines[0]) == bool(extra)
        assert [line.split(":")[0] for line in lines[1:]] == ["r0", "r1"]
        assert all("matrices refined per reweighting" in line and "exchange" in line for line in lines[1:])
