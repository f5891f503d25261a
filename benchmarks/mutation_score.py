"""The score of a `make mutants` run, per part (the library, the harness's math) and per module.

Reads the result files mutmut 3 writes next to the mutated copies (``mutants/**/*.py.meta``: an exit
code and a duration per mutant) and prints, per module and part: mutants, killed (a test failed),
timed out, survived, not run yet (or another outcome: no covering test, an unknown exit code), and
the score (killed + timed out) / (killed + timed out + survived), mutmut's own. Timeouts have their
own column because mutmut's limits are wall-clock ones: on a loaded machine a surviving mutant can run
out of time (tests/MUTANTS.md), so each one is to be checked (``--survivors`` lists them). Also the sum
of the mutants' test durations (wall seconds from fork to exit), halved: the wall time of the mutant
runs on a quiet 2-core machine (two at a time), which excludes the stats phase.

    python benchmarks/mutation_score.py            # after (or during) `make mutants`
    python benchmarks/mutation_score.py --survivors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = {"library": ("q3r/",), "harness": ("tuning/",)}
KILLED = {1, 3}                                 # a test failed; pytest's internal error (mutmut: killed)
TIMEOUT = {24, -24, 36, 152, 255, -9}           # SIGXCPU at the wall or CPU limit, SIGKILL at the hard CPU limit
SURVIVED = {0}


def results(folder: Path) -> dict[str, dict]:
    """{module path: {"codes": {mutant: exit code or None}, "durations": {mutant: s}}}."""
    out = {}
    for meta in sorted(folder.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        out[str(meta.relative_to(folder))[: -len(".meta")]] = {"codes": data["exit_code_by_key"],
                                                               "durations": data["durations_by_key"]}
    return out


def tally(codes: dict) -> tuple[int, int, int, int, int]:
    """(mutants, killed, timed out, survived, not run or other) of one module's exit codes."""
    killed = sum(c in KILLED for c in codes.values())
    timeout = sum(c in TIMEOUT for c in codes.values())
    survived = sum(c in SURVIVED for c in codes.values())
    return len(codes), killed, timeout, survived, len(codes) - killed - timeout - survived


def row(name: str, counts: tuple[int, int, int, int, int]) -> str:
    n, k, t, s, other = counts
    score = f"{100 * (k + t) / (k + t + s):.1f}%" if k + t + s else "-"
    return f"| {name} | {n} | {k} | {t} | {s} | {other} | {score} |"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=ROOT / "mutants")
    ap.add_argument("--survivors", action="store_true", help="list the surviving mutants' names")
    args = ap.parse_args(argv)
    by_module = results(args.folder)
    print("| part / module | mutants | killed | timeout | survived | not run | score |\n|---|---:|---:|---:|---:|---:|---:|")
    total_s = 0.0
    for part, prefixes in PARTS.items():
        modules = {m: r for m, r in by_module.items() if m.startswith(prefixes)}
        for module, r in modules.items():
            print(row(module, tally(r["codes"])))
        print(row(f"**{part}**", tuple(map(sum, zip(*(tally(r["codes"]) for r in modules.values())))) or (0,) * 5))
        total_s += sum(d for r in modules.values() for d in r["durations"].values())
    print(f"\nsum of the mutants' test durations / 2 (quiet 2-core estimate of the mutant runs): {total_s / 2 / 60:.1f} min")
    if args.survivors:
        for title, kind in (("survivors", SURVIVED), ("timeouts (check each)", TIMEOUT)):
            print(f"\n{title}:")
            for r in by_module.values():
                for name, code in r["codes"].items():
                    if code in kind:
                        print(" ", name + (f" ({r['durations'].get(name, 0):.0f} s)" if kind is TIMEOUT else ""))


if __name__ == "__main__":
    main()
