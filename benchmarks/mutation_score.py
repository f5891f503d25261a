"""The score of a `make mutants` run, per part (the library, the harness's math) and per module.

Reads the result files mutmut 3 writes next to the mutated copies (``mutants/**/*.py.meta``: an exit
code and a duration per mutant) and prints, per module and part: mutants, killed (a test failed or
timed out), survived, not run yet, and the score killed / (killed + survived). Also the sum of the
mutants' test durations, halved: the wall time of the mutant runs on a quiet 2-core machine (two
at a time), which excludes the stats phase.

    python benchmarks/mutation_score.py            # after (or during) `make mutants`
    python benchmarks/mutation_score.py --survivors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"library": ("q3r/",), "harness": ("tuning/",)}
KILLED = {1, 3, 24, -24, 36, 152, 255}          # mutmut's "killed" and "timeout" exit codes
SURVIVED = {0}


def results(folder: Path) -> dict[str, dict]:
    """{module path: {"codes": {mutant: exit code or None}, "durations": {mutant: s}}}."""
    out = {}
    for meta in sorted(folder.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        out[str(meta.relative_to(folder))[: -len(".meta")]] = {"codes": data["exit_code_by_key"],
                                                               "durations": data["durations_by_key"]}
    return out


def tally(codes: dict) -> tuple[int, int, int, int]:
    """(mutants, killed, survived, not run or other) of one module's exit codes."""
    killed = sum(c in KILLED for c in codes.values())
    survived = sum(c in SURVIVED for c in codes.values())
    return len(codes), killed, survived, len(codes) - killed - survived


def row(name: str, counts: tuple[int, int, int, int]) -> str:
    n, k, s, other = counts
    score = f"{100 * k / (k + s):.1f}%" if k + s else "-"
    return f"| {name} | {n} | {k} | {s} | {other} | {score} |"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=ROOT / "mutants")
    ap.add_argument("--survivors", action="store_true", help="list the surviving mutants' names")
    args = ap.parse_args(argv)
    by_module = results(args.folder)
    print("| part / module | mutants | killed | survived | not run | score |\n|---|---:|---:|---:|---:|---:|")
    total_s = 0.0
    for part, prefixes in PARTS.items():
        modules = {m: r for m, r in by_module.items() if m.startswith(prefixes)}
        for module, r in modules.items():
            print(row(module, tally(r["codes"])))
        print(row(f"**{part}**", tuple(map(sum, zip(*(tally(r["codes"]) for r in modules.values())))) or (0,) * 4))
        total_s += sum(d for r in modules.values() for d in r["durations"].values())
    print(f"\nsum of the mutants' test durations / 2 (quiet 2-core estimate of the mutant runs): {total_s / 2 / 60:.1f} min")
    if args.survivors:
        print("\nsurvivors:")
        for r in by_module.values():
            for name, code in r["codes"].items():
                if code in SURVIVED:
                    print(" ", name)


if __name__ == "__main__":
    main()
