"""The README and docs/ say only what runs: their Python examples are executed, every documented `q3r-tune`
command line is parsed by the real CLI parser, the cheap offline commands (`schema`, `--help`) run, the spec
reference is what the schema prints, and every relative link points at a file (and heading) in the repository.

A fenced block preceded by a line `<!-- not run: REASON -->` is shown, not executed.
"""
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tuning import cli
from tuning.spec import reference
from tuning.spec.sweep import json_schema

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*not run:\s*\S.*-->")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


class Block(NamedTuple):
    page: Path
    line: int
    lang: str
    code: str
    skipped: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with their language and whether they are marked not run."""
    out, lines, i = [], page.read_text().split("\n"), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        prev = next((l for l in reversed(lines[:i]) if l.strip()), "")
        out.append(Block(page, i + 1, m.group(1), "\n".join(lines[i + 1:j]), bool(SKIP.fullmatch(prev.strip()))))
        i = j + 1
    return out


ALL = [b for page in PAGES for b in blocks(page)]
PYTHON = list({b.code: b for b in reversed(ALL) if b.lang == "python" and not b.skipped}.values())[::-1]
# (one run per distinct example: the README's five lines are also in docs/library.md)
SHELL = [b for b in ALL if b.lang == "bash" and not b.skipped]


def shell_lines(prefix: str) -> list[tuple[str, str]]:
    """(where, command line) of every shell line that starts with ``prefix``, comments and redirections cut."""
    out = []
    for b in SHELL:
        for k, line in enumerate(b.code.split("\n")):
            line = re.sub(r"\s+#.*$", "", line.strip())
            line = re.sub(r"^(\.venv/bin/|\$\(VENV\)/bin/)", "", line)
            if line.startswith(prefix):
                out.append((f"{b.where}+{k + 1}", re.sub(r"\s*>\s*\S+\s*$", "", line)))
    return out


def cli_argv(line: str) -> list[str]:
    """A documented `q3r-tune ...` line as argv; optional parts in [brackets] are included."""
    return shlex.split(line.replace("[", " ").replace("]", " "))[1:]


CLI_LINES = shell_lines("q3r-tune ")


def test_the_pages_hold_what_this_test_runs():
    assert (ROOT / "docs" / "index.md").is_file()
    assert len(PYTHON) >= 2 and len(CLI_LINES) >= 15
    assert any("q3r.AdamQ3R" in b.code and b.page.name == "README.md" for b in PYTHON)   # the five lines


def test_a_block_marked_not_run_is_skipped_and_needs_a_reason(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("<!-- not run: needs a model -->\n```python\nraise SystemExit(1)\n```\n\n"
                    "<!-- not run: -->\n```python\nx = 1\n```\n")
    assert [b.skipped for b in blocks(page)] == [True, False]


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_python_example_runs(block, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{block.where}: the example fails:\n{out.stderr[-3000:]}"


@pytest.mark.parametrize("where,line", CLI_LINES, ids=[w for w, _ in CLI_LINES])
def test_documented_command_line_parses(where, line):
    try:
        args = cli.build_parser().parse_args(cli_argv(line))
    except SystemExit as e:
        pytest.fail(f"{where}: `{line}` is not a valid q3r-tune command line (exit {e.code})")
    assert callable(args.func)


def test_a_wrong_command_line_would_fail_the_parse():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(cli_argv("q3r-tune pareto digits-vit --per-tecnique"))


def test_every_documented_subcommand_has_help(capsys):
    subcommands = sorted({cli_argv(line)[0] for _, line in CLI_LINES})
    assert {"sweep", "train", "export", "schema", "pareto", "recommend", "report"} <= set(subcommands)
    for sub in subcommands:
        with pytest.raises(SystemExit) as e:
            cli.main([sub, "--help"])
        assert e.value.code == 0
        assert f"usage: q3r-tune {sub}" in capsys.readouterr().out


def test_schema_commands_run_offline(capsys):
    out = subprocess.run([sys.executable, "-m", "tuning.cli", "schema"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(json_schema("sweep"))
    assert cli.main(["schema", "trial"]) in (0, None)
    assert json.loads(capsys.readouterr().out)["title"] == "TrialSpec"


def test_spec_reference_is_what_the_schema_prints():
    page = ROOT / "docs" / "spec-reference.md"
    assert page.read_text() == reference.markdown(), \
        "docs/spec-reference.md is stale: run python -m tuning.spec.reference > docs/spec-reference.md"


def test_documented_make_targets_and_scripts_exist():
    makefile = (ROOT / "Makefile").read_text()
    for where, line in shell_lines("make "):
        for target in line.split()[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{where}: no make target {target!r}"
    scripts = shell_lines("python ")
    assert scripts
    for where, line in scripts:
        path = next((w for w in line.split()[1:] if w.endswith(".py")), None)
        assert path is None or (ROOT / path).is_file(), f"{where}: no script {path}"


def slug(heading: str) -> str:
    """The anchor a code host gives a heading: lowercase, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "").replace("*", "")
    return "".join(c for c in text.replace(" ", "-") if c.isalnum() or c in "-_")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return [m.group(1) for m in LINK.finditer(text)]


def test_slugs_follow_the_code_host():
    assert slug("The compressed model: `q3r-tune export`") == "the-compressed-model-q3r-tune-export"
    assert slug("techniques.adamq3r, techniques.adam_q3r_loss") == "techniquesadamq3r-techniquesadam_q3r_loss"
    assert slug("AdamQ3R (Algorithm 2)") == "adamq3r-algorithm-2"


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Relative links of ``page`` that leave ``root`` (the repository), or name a missing file or heading."""
    bad = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):              # https://, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if root not in dest.parents and dest != root:
            bad.append(f"{target} (outside the repository)")
        elif not dest.exists():
            bad.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target} (no heading #{fragment} in {dest.name})")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_point_at_files_and_headings_in_the_repository(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links: {broken_links(page)}"


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "math.md").write_text("# The math\n")
    page = tmp_path / "docs" / "probe.md"
    page.write_text("# Probe\n[a](math.md#the-math) [b](nothing.md) [c](math.md#no-such-heading) [d](#probe) "
                    "[e](../../outside.md) [f](https://example.org/x)\n")
    assert broken_links(page, tmp_path) == [
        "nothing.md (no such file)", "math.md#no-such-heading (no heading #no-such-heading in math.md)",
        "../../outside.md (outside the repository)"]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_the_math_is_explained_in_the_repository(page):
    text = page.read_text()
    assert "../shared" not in text and "Q3R-MATH" not in text, f"{page.name} points outside the repository"
    external = [t for t in links(page) if re.match(r"^[a-z]+:", t) and "math" in t.lower()]
    assert not external, f"{page.name} links the math outside the repository: {external}"


PATH_REF = re.compile(r"`((?:q3r|tuning|dashboards|benchmarks|tests|search_spaces)/[\w./*\-]*)`")
MODULE_REF = re.compile(r"`((?:tuning|dashboards)(?:\.\w+)+)`")      # q3r.* in backticks are also MLflow tags


def resolves(name: str) -> bool:
    """Whether a dotted name is a module of the repository, or an attribute of one."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def missing_paths(text: str, root: Path = ROOT) -> list[str]:
    """Repository paths (`tuning/spec/sweep.py`, `search_spaces/*.yaml`) and dotted names
    (`tuning.trial.recipe.run_trial`) in ``text`` that name nothing."""
    return [p for p in PATH_REF.findall(text) if not list(root.glob(p.rstrip("/")))] + \
        [name for name in MODULE_REF.findall(text) if not resolves(name)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_module_path_in_the_docs_exists(page):
    assert not missing_paths(page.read_text()), f"{page.name} names what is not there: {missing_paths(page.read_text())}"


def test_a_moved_module_path_is_found():
    assert missing_paths("`tuning/spec/sweep.py` `tuning.trial.recipe.run_trial` `search_spaces/*.yaml`") == []
    assert missing_paths("`tuning/tracking.py` `tuning.pareto` `tuning/sweep.py` `tuning.sweep.search_config`") \
        == ["tuning/tracking.py", "tuning/sweep.py", "tuning.pareto", "tuning.sweep.search_config"]
