"""dashboards: the data behind each figure on hand-made trial records with known numbers, the plotly
figures, the PNGs, the HTML report, and the report logged by ``publish`` / written by ``q3r-tune report``."""
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from PIL import Image

from dashboards import data, figures, report, static
from tuning import cli
from tuning.artifacts import publish
from tuning.analysis.pareto import fronts
from tuning.analysis.recommend import BUDGETS, recommendation_table
from tuning.analysis.records import TrialRecord
from tuning.tracking.store import PARAMS, PARENT, ROLE, STATUS, SWEEP, TECHNIQUE, TRIAL_ID, experiment_id
from tuning.trial.metrics import DEFAULT_METRIC, mlflow_key

PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.xdist_group("dashboards_store")        # under pytest-xdist, one worker builds the module's fixtures



def make(trial_id, technique, status, objective=None, levels=None, params=None, history=(), acc=None):
    """levels: {retention: (parameters, targeted, accuracy)}; history: [(epoch, objective)]."""
    metrics = {} if objective is None else {"objective": objective}
    if acc is not None:
        metrics["acc"] = acc
    for p, (n, t, a) in (levels or {}).items():
        key = f"{p:g}"
        metrics[f"acc@{key}"], metrics[f"params@{key}"], metrics[f"targeted@{key}"] = a, n, t
    return TrialRecord(trial_id=trial_id, technique=technique, params=params or {}, status=status,
                       epoch=max((e for e, _ in history), default=0), metrics=metrics,
                       history=tuple({"epoch": e, "objective": o} for e, o in history), run_id=f"run-{trial_id}")


Q3R = {"lmbda": 0.5, "lr": 1e-3, "target_rank": 0.1, "period": 5}
# A dense model of 1000 parameters, truncated at p = 0.1, 0.5 and 1.
A = make("a", "adamq3r", "completed", 0.80, {0.1: (100, 0.1, 0.70), 0.5: (500, 0.5, 0.90), 1.0: (1000, 1.0, 0.92)},
         Q3R, [(5, 0.6), (10, 0.8)], acc=0.92)
B = make("b", "adamq3r", "completed", 0.70, {0.1: (100, 0.1, 0.60), 0.5: (500, 0.5, 0.80), 1.0: (1000, 1.0, 0.93)},
         {"lmbda": 2.0, "lr": 3e-3, "target_rank": 0.2, "period": 10}, [(5, 0.5), (10, 0.7)], acc=0.93)
C = make("c", "adamw", "completed", 0.60, {0.1: (100, 0.1, 0.50), 0.5: (500, 0.5, 0.70), 1.0: (1000, 1.0, 0.95)},
         {"lr": 2e-3}, [(5, 0.55), (10, 0.6)], acc=0.95)
D = make("d", "adamw", "completed", 0.50, {0.1: (100, 0.1, 0.40), 0.5: (500, 0.5, 0.60), 1.0: (1000, 1.0, 0.96)},
         {"lr": 1e-3}, [(5, 0.45), (10, 0.5)], acc=0.96)       # lower objective, higher full accuracy
E = make("e", "adamq3r", "stopped", 0.30, {0.1: (100, 0.1, 0.99)}, {"lmbda": 20.0, "lr": 1e-3, "target_rank": 0.1,
                                                                      "period": 5}, [(5, 0.3)])
F = make("f", "lora", "running", 0.40, {}, {"lr": 1e-3, "target_rank": 0.1}, [(5, 0.4)])
G = make("g", "adamw", "diverged", 0.0, {}, {"lr": 0.0}, [(5, 0.0)])      # lr 0 cannot go on a log axis
H = make("h", "adamw", "failed", None, {}, {"lr": 1e-3})
RECORDS = [A, B, C, D, E, F, G, H]


# --- data -------------------------------------------------------------------------------------------

def test_summary():
    s = data.summary(RECORDS)
    assert s == data.Summary(8, {"completed": 4, "stopped": 1, "diverged": 1, "failed": 1, "running": 1},
                             ("adamq3r", "adamw", "lora"), 4)
    assert list(s.by_status) == ["completed", "stopped", "diverged", "failed", "running"]
    assert s.finished and not data.summary([E, F]).finished and data.summary([]).trials == 0


def test_pareto_is_tuning_fronts():
    assert data.pareto(RECORDS) == fronts(RECORDS)
    assert [(p.trial_id, p.retention) for p in data.pareto(RECORDS).overall] == [("a", 0.1), ("a", 0.5), ("d", 1.0)]


def test_best_trials_highest_objective_of_completed_trials():
    assert data.best_trials(RECORDS) == {"adamq3r": A, "adamw": C}           # E (stopped, 0.99 at 0.1) is not
    tie = make("a0", "adamq3r", "completed", 0.80, {0.1: (100, 0.1, 0.1)})
    assert data.best_trials([tie, A])["adamq3r"] is A                         # ties: the lowest trial id


def test_retention_curves_and_reference():
    got = data.retention_curves(RECORDS)
    assert got.curves == [data.RetentionCurve("adamq3r", "a", Q3R, 0.80, (0.1, 0.5, 1.0), (0.70, 0.90, 0.92)),
                          data.RetentionCurve("adamw", "c", {"lr": 2e-3}, 0.60, (0.1, 0.5, 1.0), (0.50, 0.70, 0.95))]
    assert (got.reference, got.reference_trial) == (0.96, "d")                # the best adamw full accuracy
    no_acc = make("x", "adamw", "completed", 0.5, {0.5: (500, 0.5, 0.7), 1.0: (1000, 1.0, 0.97)})
    assert data.retention_curves([no_acc]).reference == 0.97                  # acc@1 when acc is missing
    assert data.retention_curves([A, B, E]) == data.RetentionData(data.retention_curves([A]).curves, None, None)
    assert data.retention_curves([E, F]) == data.RetentionData([], None, None)


def test_sensitivity():
    panels = data.sensitivity(RECORDS)
    assert [(s.param, s.log_x) for s in panels] == [("lmbda", True), ("target_rank", False), ("period", False),
                                                    ("lr", True)]
    P = data.SensitivityPoint
    assert panels[0].points == [P(0.5, 0.8, "adamq3r", "completed", "a"), P(2.0, 0.7, "adamq3r", "completed", "b"),
                                P(20.0, 0.3, "adamq3r", "stopped", "e")]
    assert panels[1].points == [P(0.1, 0.8, "adamq3r", "completed", "a"), P(0.2, 0.7, "adamq3r", "completed", "b"),
                                P(0.1, 0.3, "adamq3r", "stopped", "e"), P(0.1, 0.4, "lora", "running", "f")]
    assert [p.value for p in panels[2].points] == [5.0, 10.0, 5.0]
    # lr: every trial with an objective, except g (lr 0 on a log axis) and h (no objective)
    assert [(p.trial_id, p.value, p.objective) for p in panels[3].points] == [
        ("a", 1e-3, 0.8), ("b", 3e-3, 0.7), ("c", 2e-3, 0.6), ("d", 1e-3, 0.5), ("e", 1e-3, 0.3), ("f", 1e-3, 0.4)]
    assert [s.param for s in data.sensitivity([C, D])] == ["lr"]
    assert data.sensitivity([]) == []


def test_progress():
    got = data.progress(RECORDS)
    assert [c.trial_id for c in got] == ["a", "b", "c", "d", "e", "f", "g"]    # h reported nothing
    assert got[0] == data.Progress("a", "adamq3r", "completed", (5, 10), (0.6, 0.8))
    assert [c.trial_id for c in got if c.stopped] == ["e"]
    messy = TrialRecord("m", "adamw", {}, "running", 3, {}, history=(
        {"epoch": 3, "objective": 0.3}, {"epoch": 1, "objective": 0.1}, {"epoch": 2, "objective": math.nan},
        {"epoch": 4}))
    assert data.progress([messy]) == [data.Progress("m", "adamw", "running", (1, 3), (0.1, 0.3))]


def test_recommendations():
    rows = data.recommendations(RECORDS)
    assert rows == recommendation_table(RECORDS, (0.05, 0.1, 0.2, 0.4))
    assert [(r["budget"], r["trial_id"], r["retention"], r["accuracy"]) for r in rows] == [
        (0.1, "a", 0.1, 0.70), (0.2, "a", 0.1, 0.70), (0.4, "a", 0.1, 0.70)]   # 0.05: none
    assert data.recommendations(RECORDS, [0.5, 1.0])[1]["trial_id"] == "d"
    assert data.recommendations([E, F]) == []


# --- figures ----------------------------------------------------------------------------------------

def _names(fig):
    return [t.name for t in fig.data]


def test_pareto_figure():
    fig = figures.plot_pareto_front(data.pareto(RECORDS))
    assert _names(fig) == ["adamq3r: every trial", "adamq3r: front", "adamw: every trial", "adamw: front",
                           f"Pareto front (hypervolume {fronts(RECORDS).hypervolume:.3f})"]
    assert len(fig.data[0].x) == 6 and list(fig.data[4].y) == [0.70, 0.90, 0.96]
    assert "lmbda=0.5<br>lr=0.001" in fig.data[0].text[0] and fig.layout.xaxis.type == "log"


def test_retention_figure():
    fig = figures.plot_retention(data.retention_curves(RECORDS))
    assert _names(fig) == ["adamq3r (trial a)", "adamw (trial c)", "adamw, full model (0.960)"]
    assert list(fig.data[2].y) == [0.96, 0.96] and list(fig.data[2].x) == [0.1, 1.0]
    assert len(figures.plot_retention(data.retention_curves([A])).data) == 1     # no adamw: no reference line


def test_sensitivity_figure():
    fig = figures.plot_sensitivity(data.sensitivity(RECORDS))
    # lmbda: adamq3r; target_rank: adamq3r, lora; period: adamq3r; lr: adamq3r, adamw, lora
    assert _names(fig) == ["adamq3r", "adamq3r", "lora", "adamq3r", "adamq3r", "adamw", "lora"]
    assert sum(bool(t.showlegend) for t in fig.data) == 3
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "linear" and fig.layout.xaxis4.type == "log"
    assert list(fig.data[0].marker.symbol) == ["circle", "circle", "x"]


def test_progress_figure():
    fig = figures.plot_progress(data.progress(RECORDS))
    assert len(fig.data) == 7 + 2                                           # 7 trials, stopped, running
    assert _names(fig)[-2:] == ["stopped early (ASHA)", "still running"]
    assert (list(fig.data[-2].x), list(fig.data[-2].y)) == ([5], [0.3])
    assert len(figures.plot_progress(data.progress([A, B])).data) == 2


@pytest.mark.parametrize("records", [[], [E, F, H]], ids=["no trial", "none finished"])
def test_figures_of_unfinished_sweeps_say_why(records):
    figs = report.build_figures(records)
    assert list(figs) == list(report.FIGURES)
    for name in ("pareto", "retention"):
        assert len(figs[name].data) == 0 and figs[name].layout.annotations[0].text == "no finished trial yet"
    assert bool(figs["progress"].data) == bool(records)


# --- PNGs and the HTML report -----------------------------------------------------------------------

@pytest.mark.parametrize("records", [RECORDS, []], ids=["sweep", "empty"])
def test_write_pngs(tmp_path, records):
    paths = report.write_pngs(records, tmp_path / "figs")
    assert [p.name for p in paths] == [f"{n}.png" for n in report.PNGS]
    for p in paths:
        assert p.read_bytes()[:8] == PNG
        with Image.open(p) as im:
            assert im.width > 300 and im.height > 150


def test_build_report_embeds_plotly_once():
    from plotly.offline import get_plotlyjs

    page = report.build_report(RECORDS, "sweep <x>", "from a test")
    assert page.count(get_plotlyjs()) == 1 and "<script src=" not in page and "cdn" not in page.lower()[:2000]
    for name in report.FIGURES:
        assert page.count(f'id="fig-{name}"') == 1
    assert page.count('class="plotly-graph-div"') == len(report.FIGURES)
    assert "<title>sweep &lt;x&gt;</title>" in page and "from a test" in page
    assert 'id="recommendation-table"' in page and "lmbda=0.5 lr=0.001 period=5 target_rank=0.1" in page
    assert "8 trials: 4 completed, 1 stopped, 1 diverged, 1 failed, 1 running" in page
    assert 'id="no-finished-trial"' not in page


def report_rows(page: str) -> list[dict]:
    """The rows of a report's recommendation table, as {column: cell text}."""
    table = re.search(r'<table id="recommendation-table">(.*?)</table>', page).group(1)
    return [dict(zip(static.COLUMNS, re.findall(r"<td[^>]*>(.*?)</td>", row)))
            for row in re.findall(r"<tr>(.*?)</tr>", table.split("</thead>")[1])]


def test_the_report_shows_the_budgets_the_sweep_confirms():
    """A trial small enough for any budget: the report's table has one row for each budget the sweep
    confirms and publishes (tuning.analysis.recommend.BUDGETS), and no other."""
    small = make("s", "adamq3r", "completed", 0.5, {0.01: (10, 0.01, 0.5), 1.0: (1000, 1.0, 0.9)}, Q3R)
    shown = [row["budget"] for row in report_rows(report.build_report([small]))]
    assert shown == [f"{b:g} of targeted" for b in BUDGETS] and len(BUDGETS) >= 3
    assert [row["budget"] for row in data.recommendations([small])] == list(BUDGETS)


def test_report_of_an_unfinished_sweep(tmp_path):
    path = report.write_report([E, F], tmp_path / "sub" / "r.html", title="running")
    page = path.read_text()
    assert 'id="no-finished-trial"' in page and "No finished trial yet." in page
    assert page.count('class="plotly-graph-div"') == len(report.FIGURES)
    assert "no finished trial yet: no recommendation" in page
    assert "No trial has started yet." in report.build_report([])


# --- on MLflow ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory, fresh_store):
    folder = tmp_path_factory.mktemp("mlflow")
    uri = fresh_store(folder / "mlruns.db")
    return uri, MlflowClient(uri)


def _artifacts(client, run_id, path=None):
    return sorted(f.path for f in client.list_artifacts(run_id, path))


def test_publish_logs_the_report_on_the_parent_run(store, monkeypatch):
    uri, client = store
    monkeypatch.setattr(publish, "write_spec", lambda rec, path: Path(path).write_text("# spec\n"))
    spec = SimpleNamespace(retentions=[0.1, 0.5, 1.0], spaces={"adamq3r": {}, "adamw": {}}, score=DEFAULT_METRIC)
    for name, records in (("published", RECORDS), ("unfinished", [E, F])):
        parent = client.create_run(experiment_id(client, name)).info.run_id
        lines = []
        summary = publish.publish(client, parent, spec, records, log=lines.append)
        assert "report.html" in _artifacts(client, parent)
        assert _artifacts(client, parent, "figures") == sorted(f"figures/{n}.png" for n in report.PNGS)
        local = Path(summary["report"])
        assert local.is_file() and "mlartifacts" in local.parts        # beside the sqlite database
        assert f"report: {local}" in "\n".join(lines)
        assert 'id="fig-pareto"' in local.read_text()


def _log_sweep(client, name, records):
    """A sweep in MLflow as tuning.tracking leaves it: a parent run and one child run per trial."""
    exp = experiment_id(client, name)
    parent = client.create_run(exp, tags={ROLE: SWEEP}).info.run_id
    for r in records:
        run = client.create_run(exp, tags={PARENT: parent, TRIAL_ID: r.trial_id, TECHNIQUE: r.technique,
                                           STATUS: r.status, PARAMS: json.dumps(r.params)}).info.run_id
        metrics = [Metric(k, v, 0, h["epoch"]) for h in r.history for k, v in h.items()]
        metrics += [Metric(mlflow_key(k), float(v), 0, r.epoch) for k, v in r.metrics.items() if k != "objective"]
        client.log_batch(run, metrics=metrics)
    return parent


def test_report_command(store, tmp_path, capsys):
    uri, client = store
    _log_sweep(client, "cli-sweep", RECORDS)
    out = tmp_path / "report.html"
    pngs = tmp_path / "pngs"
    assert cli.main(["report", "cli-sweep", "-o", str(out), "--tracking-uri", uri, "--pngs", str(pngs)]) == 0
    assert f"report of 8 trials written to {out}" in capsys.readouterr().out
    page = out.read_text()
    assert "q3r-tune sweep cli-sweep" in page and "8 trials: 4 completed" in page
    assert 'id="no-finished-trial"' not in page and page.count('class="plotly-graph-div"') == 4
    assert sorted(p.name for p in pngs.iterdir()) == sorted(f"{n}.png" for n in report.PNGS)
    assert cli.main(["report", "no-such-sweep", "--tracking-uri", uri]) == 2
    assert "no sweep named 'no-such-sweep'" in capsys.readouterr().err


def test_static_cells():
    assert static.cell("parameters", 12345) == "12,345" and static.cell("budget", 0.2) == "0.2 of targeted"
    assert static.cell("accuracy", 0.91234) == "0.9123" and static.cell("retention", 0.1) == "0.1"
