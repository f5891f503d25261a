"""The report of a sweep whose metric is a loss: its figures, tables and captions name the metric and
its direction, and its best trials are those with the lowest loss."""
from dashboards import data, figures, report, static
from tuning.analysis.records import TrialRecord
from tuning.trial.metrics import Metric

LOSS = Metric("val_loss", "min")


def make(trial_id, technique, objective, levels, params):
    """levels: {retention: (parameters, targeted, val_loss)}."""
    metrics = {"objective": objective, "val_loss": levels[1.0][2]}
    for p, (n, t, v) in levels.items():
        metrics.update({f"val_loss@{p:g}": v, f"params@{p:g}": n, f"targeted@{p:g}": t})
    return TrialRecord(trial_id, technique, params, "completed", 10, metrics,
                       history=({"epoch": 5, "objective": objective + 0.1}, {"epoch": 10, "objective": objective}))


A = make("a", "adamq3r", 0.40, {0.1: (100, 0.1, 0.50), 1.0: (1000, 1.0, 0.30)}, {"lmbda": 0.5, "lr": 1e-3})
B = make("b", "adamq3r", 0.70, {0.1: (100, 0.1, 0.90), 1.0: (1000, 1.0, 0.50)}, {"lmbda": 2.0, "lr": 1e-3})
C = make("c", "adamw", 0.60, {0.1: (100, 0.1, 0.80), 1.0: (1000, 1.0, 0.20)}, {"lr": 1e-3})
D = make("d", "adamw", 0.65, {0.1: (100, 0.1, 0.85), 1.0: (1000, 1.0, 0.10)}, {"lr": 3e-3})
RECORDS = [A, B, C, D]


def test_best_trials_and_the_reference_have_the_lowest_loss():
    assert data.best_trials(RECORDS, LOSS) == {"adamq3r": A, "adamw": C}
    assert data.best_trials(RECORDS) == {"adamq3r": B, "adamw": D}            # as accuracy: the highest
    curves = data.retention_curves(RECORDS, metric=LOSS)
    assert (curves.reference, curves.reference_trial) == (0.10, "d")           # the lowest full-model loss
    assert curves.curves[0].accuracies == (0.50, 0.30)


def test_figures_are_labelled_with_the_metric():
    pareto = figures.plot_pareto_front(data.pareto(RECORDS, LOSS))
    assert pareto.layout.yaxis.title.text == "validation val_loss (lower is better)"
    assert pareto.layout.title.text.startswith("Val_loss against parameters")
    assert "val_loss 0.5000" in pareto.data[0].text[0]
    retention = figures.plot_retention(data.retention_curves(RECORDS, metric=LOSS))
    assert retention.layout.yaxis.title.text == "validation val_loss (lower is better)"
    progress = figures.plot_progress(data.progress(RECORDS), LOSS)
    assert progress.layout.yaxis.title.text == "objective (val_loss (lower is better))"
    assert not data.pareto(RECORDS).all_points                               # no acc@p: nothing as accuracy


def test_the_report_and_its_table_name_the_metric(tmp_path):
    page = report.build_report(RECORDS, metric=LOSS, budgets=[0.1])
    assert "<th>val_loss</th>" in page and "<th>accuracy</th>" not in page
    assert "The metric is val_loss: lower is better." in page
    assert static.columns(LOSS)[5] == "val_loss" and static.cell("val_loss", 0.5, LOSS) == "0.5000"
    rows = data.recommendations(RECORDS, [0.1], LOSS)
    assert [(r["trial_id"], r["val_loss"]) for r in rows] == [("a", 0.50)]
    pngs = report.write_pngs(RECORDS, tmp_path, budgets=[0.1], metric=LOSS)
    assert all(p.is_file() for p in pngs)
