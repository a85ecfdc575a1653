"""The trials as a table for analysis: ``Study.trials_dataframe()`` and ``trials --format csv``,
with Optuna's column names, read back from a real study file."""

import csv
import io
import math

import pandas as pd
import pytest
from conftest import run_cli

from torchtune_hp import Categorical, Float, Study, TrialPruned


def _study(tmp_path) -> Study:
    space = {"lr": Float(1e-4, 1e-1, log=True), "opt": Categorical(["adam", "sgd"])}

    def objective(trial):
        lr = trial.params["lr"]
        for step in range(3):
            trial.report(lr + 1.0 / (step + 1), step=step)
        if trial.number == 1:
            raise TrialPruned()
        if trial.number == 2:
            raise RuntimeError("boom")
        return lr

    study = Study("ex", space, sampler="random", seed=3, logdir=tmp_path, tensorboard=False)
    with pytest.warns(UserWarning, match="trial 2 failed: RuntimeError: boom"):
        study.optimize(objective, n_trials=4)  # 0 COMPLETE, 1 PRUNED, 2 FAILED, 3 COMPLETE
    return study


def test_trials_dataframe_has_optunas_columns_and_the_studys_values(tmp_path):
    study = _study(tmp_path)
    df = study.trials_dataframe()
    trials = study.trials
    assert list(df.columns[:7]) == [
        "number",
        "value",
        "datetime_start",
        "datetime_complete",
        "duration",
        "params_lr",
        "params_opt",
    ]
    assert (
        list(df["state"])
        == [t.state.name for t in trials]
        == [
            "COMPLETE",
            "PRUNED",
            "FAILED",
            "COMPLETE",
        ]
    )
    assert list(df["params_lr"]) == [t.params["lr"] for t in trials]
    assert df.loc[0, "value"] == trials[0].value == trials[0].params["lr"]
    assert math.isnan(df.loc[2, "value"]) and "RuntimeError: boom" in df.loc[2, "error"]
    assert list(df["reports"]) == [3, 3, 3, 3]
    # Optuna's analysis idioms work as written
    assert df.sort_values("value").iloc[0]["number"] == study.best_trial.number
    assert (df["duration"].dt.total_seconds() >= 0).all()
    assert str(df["datetime_start"].dt.tz) == "UTC"


def test_trials_format_csv_is_the_same_table_for_a_spreadsheet(tmp_path):
    study = _study(tmp_path)
    study.close()
    out = run_cli("trials", str(tmp_path / "ex"), "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    frame = study.trials_dataframe()
    assert list(rows[0]) == list(frame.columns)
    assert [float(r["params_lr"]) for r in rows] == list(frame["params_lr"])
    assert rows[2]["value"] == "" and rows[2]["state"] == "FAILED"
    assert "RuntimeError: boom" in rows[2]["error"]  # a multi-line traceback, quoted
    assert rows[0]["datetime_start"].endswith("Z")
    assert float(rows[0]["duration"]) == frame.loc[0, "duration"].total_seconds()
    one = run_cli("trials", str(tmp_path / "ex"), "--format", "csv", "--trial", "3")
    (row,) = csv.DictReader(io.StringIO(one.stdout))
    assert row == rows[3]


def test_an_empty_study_gives_the_columns_and_no_rows(tmp_path):
    study = Study("none", {"x": Float(0, 1)}, logdir=tmp_path, tensorboard=False)
    df = study.trials_dataframe()
    assert len(df) == 0 and "params_x" in df.columns and "state" in df.columns
    assert isinstance(df, pd.DataFrame)


def test_the_column_types_are_the_same_whatever_the_trials_hold(tmp_path):
    """An empty study gave ``object`` columns and one whose trials all failed an ``object``
    ``value`` of None: analysis code written on a good study broke on those (Optuna's are
    float64 throughout). Text columns (a categorical's, the note, the error) stay text."""
    text = {"params_opt", "note", "error"}

    def kinds(study: Study) -> dict[str, str]:
        df = study.trials_dataframe()
        return {c: str(t) for c, t in df.dtypes.items() if c not in text}

    space = {"lr": Float(1e-4, 1e-1, log=True), "opt": Categorical(["adam", "sgd"])}
    good = kinds(_study(tmp_path))
    assert good["value"] == "float64" and good["datetime_start"].endswith(", UTC]")
    empty = Study("empty", space, logdir=tmp_path, tensorboard=False)
    failed = Study("failed", space, logdir=tmp_path, tensorboard=False)
    with pytest.warns(UserWarning, match="ZeroDivisionError"):
        failed.optimize(lambda t: 1 / 0, n_trials=2)
    assert kinds(empty) == kinds(failed) == good
    assert failed.trials_dataframe()["value"].isna().all()


def test_the_trials_table_tells_parameter_values_and_columns_apart(tmp_path):
    """Choices 1, '1' and 1.0 all printed as 1; a choice with a newline split its row in two;
    a parameter named ``state`` gave two ``state`` columns."""
    from torchtune_hp.display import plain_table, trial_rows

    space = {"state": Categorical([1, "1", 1.0, "a\nb", "adam"]), "drop": Float(0, 0.6, step=0.1)}
    study = Study("t", space, sampler="random", seed=0, logdir=tmp_path, tensorboard=False)
    for choice in space["state"].choices:
        study.enqueue({"state": choice}, skip_if_exists=False)
    study.optimize(lambda t: t.params["drop"], n_trials=10)
    study.close()
    out = run_cli("trials", str(tmp_path / "t"))
    assert out.returncode == 0, out.stderr
    header, rows = trial_rows(study.trials, list(space), "value")
    assert header[:6] == ["#", "state", "value", "seconds", "state (parameter)", "drop"]
    assert {r[4] for r in rows} == {"1", "'1'", "1.0", "'a\\nb'", "adam"}
    assert {r[5] for r in rows} <= {f"{k / 10}" for k in range(7)}
    assert len(out.stdout.strip().splitlines()) == 1 + 10  # one line per trial
    assert out.stdout.splitlines()[0].split()[:6] == ["#", "state", "value", "seconds", "state"] + [
        "(parameter)"
    ]
    assert plain_table(header, rows).count("\n") == 10
