"""Bad input to ``q3r-tune``: one line naming the problem, exit code 2, no traceback, nothing written."""
from __future__ import annotations

import os

import pytest

from tuning import cli
from tuning.spec.sweep import from_dict
from tuning.tracking.store import start_sweep, check_tracking
from tuning.trial import spec as trial_spec

from tests.tuning.sweep_helpers import tiny_spec, write_spec

TRIAL = ("data: {name: digits, limit: 128}\nmodel: {kind: vit, depth: 1, width: 16, heads: 2}\n"
         "technique: {name: adamw, lr: 3.0e-3}\ntrain: {epochs: 2, batch_size: 64, eval_every: 1, retentions: [0.5, 1.0]}\n")


def files(folder) -> set:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs} | \
           {os.path.relpath(d, folder) for d, _, _ in os.walk(folder)}


def one_line_error(capsys, code: int, rc: int = 2) -> str:
    captured = capsys.readouterr()
    assert code == rc, captured
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A fresh working directory holding a sweep spec and a trial spec; what else appears is 'written'."""
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path, tiny_spec(name="bad"), "sweep.yaml")
    (tmp_path / "trial.yaml").write_text(TRIAL)
    return tmp_path


@pytest.mark.parametrize("argv", [
    ["sweep", "sweep.yaml", "--tracking-uri", "mlruns.db"],
    ["train", "trial.yaml", "--tracking-uri", "mlruns.db"],
    ["pareto", "bad", "--tracking-uri", "mlruns.db"],
    ["report", "bad", "--tracking-uri", "mlruns.db"],
    ["ui", "--tracking-uri", "mlruns.db"],
], ids=lambda a: a[0])
def test_a_path_given_as_the_tracking_uri_says_what_to_write(here, capsys, argv):
    before = files(here)
    err = one_line_error(capsys, cli.main(argv))
    assert ("tracking URI 'mlruns.db' is a path, not a tracking URI: write sqlite:///mlruns.db for a database file"
            in err), err
    assert "http(s)://HOST:PORT, databricks" in err
    assert files(here) == before


def test_an_absolute_path_and_an_unknown_scheme(here):
    from tuning.tracking.store import TrackingError
    with pytest.raises(TrackingError, match=r"'/data/runs.db' is a path, .* write sqlite:////data/runs.db for"):
        check_tracking("/data/runs.db")
    with pytest.raises(TrackingError, match=r"tracking URI 'mlflow://x': unknown scheme 'mlflow'; accepted: sqlite"):
        check_tracking("mlflow://x")


@pytest.mark.parametrize("argv", [
    ["pareto", "ghost"], ["recommend", "ghost", "--budget", "0.2"], ["report", "ghost"],
    ["export", "ghost", "--budget", "0.2"], ["sync", "ghost"], ["resume", "ghost"], ["confirm", "ghost"],
], ids=lambda a: a[0])
def test_read_only_commands_never_create_a_store(here, capsys, argv):
    before = files(here)
    uri = f"sqlite:///{here / 'nothing-here.db'}"
    err = one_line_error(capsys, cli.main([*argv, "--tracking-uri", uri]))
    assert f"no sweep named 'ghost' in the tracking store {uri} (there is no file {here / 'nothing-here.db'})" in err
    assert files(here) == before


def test_export_of_an_unknown_run_and_the_ui_never_create_a_store(here, capsys):
    uri = f"sqlite:///{here / 'nothing-here.db'}"
    before = files(here)
    err = one_line_error(capsys, cli.main(["export", "--run", "0a1b", "--retention", "0.2", "--tracking-uri", uri]))
    assert "no run '0a1b' in the tracking store" in err
    err = one_line_error(capsys, cli.main(["ui", "--tracking-uri", uri]))
    assert f"no tracking store at {uri}" in err
    assert files(here) == before


def test_an_existing_store_without_the_sweep_says_so(here, capsys, fresh_store):
    uri = fresh_store(here / "m.db")                            # a store that exists, with no sweep in it
    capsys.readouterr()
    err = one_line_error(capsys, cli.main(["pareto", "ghost", "--tracking-uri", uri]))
    assert err == f"q3r-tune pareto: no sweep named 'ghost' in the tracking store {uri}"


def test_report_into_a_folder_that_cannot_be_created(here, capsys, fresh_store):
    uri = fresh_store(here / "m.db")
    start_sweep(check_tracking(uri), "bad", tiny_spec(name="bad"), str(here / "runs"))     # a sweep with no trial yet
    (here / "taken").write_text("a file, not a folder")
    before = files(here)
    capsys.readouterr()
    err = one_line_error(capsys, cli.main(["report", "bad", "-o", "taken/report.html", "--tracking-uri", uri]))
    assert err.startswith("q3r-tune report: -o taken/report.html: cannot create the folder taken (")
    err = one_line_error(capsys, cli.main(["report", "bad", "--pngs", "taken/figures", "--tracking-uri", uri]))
    assert err.startswith("q3r-tune report: --pngs taken/figures: cannot create the folder taken/figures (")
    assert files(here) == before                               # not even the report that could have been written
    assert cli.main(["report", "bad", "-o", "new/folder/r.html", "--tracking-uri", uri]) == 0
    assert (here / "new/folder/r.html").is_file()


@pytest.mark.parametrize("override, message", [
    ("technique.name=sgd", "trial.yaml (--set technique.name=sgd): technique.name must be 'adamq3r', 'adam_q3r_loss', "
                           "'adamw', 'lora' or 'lorita', but got 'sgd'"),
    ("technique.lr=0", "trial.yaml (--set technique.lr=0): technique.lr must be greater than 0, but got 0"),
])
def test_train_rejects_a_bad_technique_before_anything_starts(here, capsys, override, message):
    before = files(here)
    err = one_line_error(capsys, cli.main(["train", "trial.yaml", "--set", override]))
    assert err == f"q3r-tune train: {message}"
    assert files(here) == before                               # no runs/ folder, no mlruns.db


def test_eval_every_that_leaves_asha_nothing_to_judge_is_rejected_and_a_late_first_rung_warned(here, capsys):
    before = files(here)
    err = one_line_error(capsys, cli.main(["sweep", "sweep.yaml", "--set", "train.eval_every=4"]))
    assert err == ("q3r-tune sweep: sweep.yaml (--set train.eval_every=4): train.eval_every must be < max_t (4) for "
                   "scheduler asha: ASHA judges a trial at its evaluations, and the first would come at epoch 4, the "
                   "last, so nothing could be stopped early; lower it to at most grace_period (1), but got 4")
    assert files(here) == before                               # no q3r-runs/, no mlruns.db
    later = from_dict(tiny_spec(epochs=12, train={"eval_every": 4}, scheduler={"kind": "asha", "grace_period": 2}))
    assert later.advice() == ["<dict>: train.eval_every (4) > scheduler.grace_period (2): ASHA judges a trial at its "
                              "evaluations, so its first rung waits until epoch 4; set eval_every <= grace_period for "
                              "the rung at epoch 2"]
    once = from_dict(tiny_spec(epochs=3, train={"eval_every": 5}, scheduler={"kind": "fifo"}))
    assert once.advice() == ["<dict>: train.eval_every (5) > epochs (3): each trial reports, and saves a checkpoint, "
                             "only at its last epoch; a trial whose worker dies starts again from scratch"]
    assert from_dict(tiny_spec()).advice() == []               # eval_every 1, grace period 1


def test_train_warns_when_it_would_evaluate_only_at_the_end(here, capsys, fresh_store):
    cfg = trial_spec.load(here / "trial.yaml", ["train.epochs=1", "train.eval_every=3"])
    assert cfg.advice() == ["train.eval_every (3) > train.epochs (1): the trial is evaluated, reported and "
                            "checkpointed only at its last epoch, and collapse_patience never applies"]
    assert trial_spec.load(here / "trial.yaml").advice() == []
    assert cli.main(["train", "trial.yaml", "--set", "train.epochs=1", "--set", "train.eval_every=3",
                     "--tracking-uri", fresh_store(here / "m.db")]) == 0
    assert "q3r-tune train: warning: trial.yaml: train.eval_every (3) > train.epochs (1)" in capsys.readouterr().err
