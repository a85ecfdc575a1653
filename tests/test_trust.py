"""Nothing a trial produces, no fault, file or signal may crash a study, lose a result or let a
second driver in. Real SQLite files, real processes, real signals, real mounts; nothing mocked.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    cli_cmd,
    function_recipe,
    on_terminal,
    pid_alive,
    private_mounts,
    read_trials,
    run_cli,
    seen_pids,
    wait_seen,
    xy_recipe,
)
from conftest import write_yaml as write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchtune_hp import Float, Study, TrialState
from torchtune_hp.executors import channel
from torchtune_hp.executors.loop import HEARTBEAT_S
from torchtune_hp.executors.metric import MISSING, compile_metric_regex, last_json_value
from torchtune_hp.outcome import Outcome, as_number, outcome_of_return
from torchtune_hp.trial import Interruption

SCRIPTS = Path(__file__).parent / "scripts"
FAKE = str(SCRIPTS / "fake_train.py")


def command_recipe(folder: Path, command: list, trials: int = 3, **sections) -> Path:
    return xy_recipe(folder, {"command": command}, trials, **sections)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 0. the recipes' own relative logdir ---------------------------------------------------------
def test_report_from_a_script_with_the_recipes_relative_logdir(tmp_path):
    """A user's folder, ``logdir: logs``, a script calling torchtune_hp.report(): every path
    handed to the trial is absolute, so its reports reach the study."""
    home = tmp_path / "my_project"
    home.mkdir()
    command_recipe(home, ["python", FAKE, "--how", "report", "--epochs", "3"])
    result = run_cli("run", "recipe.yaml", cwd=home)
    assert result.returncode == 0, result.stderr
    trials = read_trials(home / "logs" / "sub")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert sorted(t.intermediate) == [0, 1, 2]
        seen = json.loads(
            (home / "logs" / "sub" / f"trial_{t.number:04d}" / "seen.json").read_text()
        )
        assert Path(seen["cwd"]) == home / "logs" / "sub" / f"trial_{t.number:04d}"


# -- 1. nothing a trial produces crashes the driver ----------------------------------------------
ODD_RETURNS = [
    None,
    {"value": None},
    [0.1, 0.2],
    torch.tensor([0.1, 0.2]),
    np.array([1.0, 2.0, 3.0]),
    10**400,
    -(10**400),
    "0.5",
    True,
    object(),
    {"value": torch.tensor([1.0, 2.0])},
    {"other": 1.0},
    complex(1, 2),
    float("nan"),
    torch.tensor(float("inf")),
]


@pytest.mark.parametrize("value", ODD_RETURNS, ids=[type(v).__name__ for v in ODD_RETURNS])
def test_an_odd_return_fails_only_its_trial_and_the_study_goes_on(tmp_path, value):
    outs = iter([value, 0.25])
    with Study("odd", {"x": Float(0, 1)}, logdir=tmp_path, seed=0) as study:
        with pytest.warns(UserWarning, match="trial 0 failed"):
            study.optimize(lambda t: next(outs), n_trials=2, fail_fast=0)
        first, second = study.trials
        assert first.state is TrialState.FAILED and first.value is None and first.error
        assert second.state is TrialState.COMPLETE and second.value == 0.25
    # the resumed study opens cleanly and has nothing RUNNING
    with Study("odd", {"x": Float(0, 1)}, logdir=tmp_path, seed=0) as again:
        assert [t.state for t in again.trials] == [TrialState.FAILED, TrialState.COMPLETE]


ANYTHING = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.builds(np.float32, st.floats(width=32))
    | st.builds(np.array, st.lists(st.floats(), max_size=3))
    | st.builds(torch.tensor, st.lists(st.floats(width=32), min_size=0, max_size=3))
    | st.builds(lambda v: torch.tensor(v), st.floats(width=32)),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["value", "loss", "acc"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANYTHING)
def test_whatever_an_objective_returns_the_trial_ends_recorded(value):
    study = Study("any", {"x": Float(0, 1)}, logdir=None, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failure warns; that is not what is checked here
        study.optimize(lambda t: value, n_trials=1, fail_fast=0)
    (trial,) = study.trials
    expected = outcome_of_return(value, "value")
    assert trial.state is expected.state
    if trial.state is TrialState.COMPLETE:
        assert math.isfinite(trial.value) and trial.value == expected.value
    else:
        assert trial.state is TrialState.FAILED and trial.value is None and trial.error


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=8), st.text(max_size=40))
def test_whatever_a_script_prints_or_writes_the_readers_never_raise(tmp_path_factory, lines, key):
    text = "\n".join(lines)
    value = last_json_value(text, key)
    assert value is MISSING or value is not None or '"' in text
    regex = compile_metric_regex(r"valid loss\s+(?P<value>\S+)")
    for match in regex.finditer(text):
        from torchtune_hp.executors.metric import regex_value

        number = regex_value(match)
        assert number is None or isinstance(number, float)
    run_dir = tmp_path_factory.mktemp("reports")
    (run_dir / channel.REPORTS).write_text(text + "\n")
    reader = channel.ReportReader(run_dir, "token", "loss")
    for report in reader.new():  # never raises; the study decides what the values mean
        number, why = as_number(report.value)
        assert number is not None or why


def test_regex_match_that_is_not_a_number_is_skipped_with_a_note(tmp_path):
    """The README's own regex on a line like ``valid loss (computing)``."""
    script = tmp_path / "noisy.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            print("valid loss (computing)", flush=True)
            for epoch in range(3):
                print(f"epoch {epoch} | valid loss  {0.5 / (epoch + 1):.4f} |", flush=True)
                print("valid loss nan-ish", flush=True)
            """
        )
    )
    xy_recipe(
        tmp_path,
        {"command": ["python", "noisy.py"], "metric_regex": r"valid loss\s+(\S+)"},
        trials=1,
    )
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (trial,) = read_trials(tmp_path / "logs" / "sub")
    assert trial.state is TrialState.COMPLETE
    assert [round(v, 4) for v in trial.intermediate.values()] == [0.5, 0.25, 0.1667]
    assert "matched metric_regex with no number were skipped" in trial.note
    assert "(computing)" in trial.note


def test_a_nan_report_is_a_diverged_trial_and_ends_no_other_trial(tmp_path):
    """workers=2: one trial reports NaN mid-way; it is recorded as the worst value and pruned,
    the other trial finishes, nothing is left RUNNING."""
    command_recipe(
        tmp_path,
        ["python", FAKE, "--how", "report", "--epochs", "4"],
        trials=2,
        executor={"workers": 2, "devices": "cpu"},
        pruner={"name": "median", "n_startup": 1, "n_warmup": 0},
    )
    raw = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    raw["sampler"] = {"name": "grid", "shuffle": False}
    raw["space"] = {"nan_at": {"type": "categorical", "choices": [1, 99]}}
    write(tmp_path / "recipe.yaml", raw)
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    by_choice = {t.params["nan_at"]: t for t in read_trials(tmp_path / "logs" / "sub")}
    diverged, healthy = by_choice[1], by_choice[99]
    assert healthy.state is TrialState.COMPLETE and len(healthy.intermediate) == 4
    assert diverged.intermediate[1] == math.inf  # NaN is kept as the worst value
    assert diverged.state is TrialState.PRUNED
    assert diverged.note == "stopped: its report at step 1 was NaN or inf", diverged.note


def test_a_script_that_prints_nan_fails_saying_where_it_was_read(tmp_path):
    """A final value of NaN printed as JSON or left in TensorBoard was 'the objective
    returned nan', as if a function had returned it."""
    (tmp_path / "diverge.py").write_text(
        "import json, sys\nprint(json.dumps({'loss': float(sys.argv[1])}))\n"
    )
    command_recipe(tmp_path, ["python", "diverge.py", "nan"], trials=2)
    assert run_cli("run", "recipe.yaml", cwd=tmp_path).returncode == 1  # nothing COMPLETE
    for t in read_trials(tmp_path / "logs" / "sub"):
        assert t.state is TrialState.FAILED
        assert t.error == "the 'loss' it printed last was nan (the run diverged)", t.error


class BuggyListener:
    """A subscriber with a bug that crashes the driver whenever one configuration starts."""

    def trial_started(self, study, trial):
        if trial.params["x"] == 0.5:
            raise RuntimeError("a bug in the driver")


def _buggy_run(tmp_path):
    study = Study("bug", {"x": Float(0, 1)}, logdir=tmp_path, seed=0)
    study.subscribe(BuggyListener())
    if not study.trials:
        study.enqueue({"x": 0.5})
    try:
        study.optimize(lambda trial: trial.params["x"], n_trials=3)
    finally:
        study.close()


def test_a_driver_bug_on_one_trial_does_not_crash_every_resume(tmp_path):
    with pytest.raises(RuntimeError, match="a bug in the driver"):
        _buggy_run(tmp_path)  # the trial crashes the driver...
    with pytest.raises(RuntimeError, match="a bug in the driver"):
        _buggy_run(tmp_path)  # ...and its one retry does too
    _buggy_run(tmp_path)  # the third run goes past it and finishes
    trials = read_trials(tmp_path / "bug")
    crashed = [t for t in trials if t.params["x"] == 0.5]
    assert len(crashed) == 2 and all(t.interruption is Interruption.DIED for t in crashed)
    assert "it was the retry, so no more" in crashed[1].error  # not a promise of another
    assert sum(t.state is TrialState.COMPLETE for t in trials) == 3


def test_the_in_memory_view_equals_the_database(tmp_path):
    with Study("view", {"x": Float(0, 1)}, logdir=tmp_path, seed=0, pruner="median") as study:

        def objective(trial):
            for step in range(3):
                trial.report(trial.params["x"] * (3 - step), step)
            if trial.number == 2:
                raise ValueError("boom")
            return trial.params["x"]

        with pytest.warns(UserWarning):
            study.optimize(objective, n_trials=6)
        study.enqueue({"x": 0.1})
        t = study.ask()
        study.report(t, float("nan"), 0)
        study.report(t, "not a number", 1)
        assert study.trials == read_trials(tmp_path / "view")


# -- 2. one driver per study ---------------------------------------------------------------------
FAST = """
import time

def train(trial, sleep=0.0):
    time.sleep(sleep)
    return (trial.params["x"] - 0.3) ** 2
"""


def fast_study(folder: Path, trials: int, sleep: float = 0.0, **study) -> Path:
    (folder / "fast.py").write_text(FAST)
    recipe = {
        "study": {"name": "fast", "metric": "loss", "trials": trials, "seed": 0, **study},
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "sampler": {"name": "random"},
        "objective": {"function": "fast.py:train"},
        "train": {"sleep": sleep},
        "logdir": "logs",
    }
    return write(folder / "fast.yaml", recipe)


def wait_for(condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def count(study_dir: Path, state: str) -> int:
    try:
        return sum(t.state.value == state for t in read_trials(study_dir))
    except Exception:
        return 0


def test_deleting_or_touching_files_never_lets_a_second_driver_in(tmp_path):
    fast_study(tmp_path, trials=12, sleep=1.0)
    study_dir = tmp_path / "logs" / "fast"
    first = subprocess.Popen(cli_cmd("run", "fast.yaml"), cwd=tmp_path, stderr=subprocess.PIPE)
    wait_for(lambda: count(study_dir, "COMPLETE") >= 2, what="the first driver")
    assert not list(study_dir.glob("*lock*"))  # no lock file to delete...
    (study_dir / "study.db.lock").write_text("0")  # ...and a planted one means nothing
    (study_dir / "study.db.lock").unlink()
    os.utime(study_dir / "study.db")
    second = run_cli("run", "fast.yaml", cwd=tmp_path)
    assert second.returncode == 2
    assert "being run by another process (pid" in second.stderr and str(first.pid) in second.stderr
    told = run_cli("validate", "fast.yaml", cwd=tmp_path)  # it said "a run goes on with ..."
    assert told.returncode == 2 and told.stderr == second.stderr

    # readers are welcome while it runs (asked until one catches a trial mid-run: between
    # trials the driver may be drawing the study's pictures, with none running)
    def read_running() -> bool:
        shown = run_cli("trials", str(study_dir), "--format", "json")
        assert shown.returncode == 0, shown.stderr
        return "RUNNING" in shown.stdout

    wait_for(read_running, what="a reader seeing a running trial")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    trials = read_trials(study_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12
    assert len({t.params["x"] for t in trials}) == 12
    assert not [p for p in study_dir.iterdir() if "lock" in p.name]  # nothing left behind


@pytest.mark.parametrize("what", ["study.db", "the study folder"])
def test_deleting_the_database_while_the_study_runs_loses_nothing(tmp_path, what):
    """A cleanup script or a stray ``rm -r logs/...`` while a study runs: SQLite wrote on into
    the deleted file, and every trial was gone when the driver closed it. The driver writes the
    database again from the open one, says so, and the study goes on."""
    fast_study(tmp_path, trials=24, sleep=0.5)  # 10 s after the deletion: time to refuse a
    study_dir = tmp_path / "logs" / "fast"
    driver = subprocess.Popen(
        cli_cmd("run", "fast.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: count(study_dir, "COMPLETE") >= 3, what="three trials")
    if what == "study.db":
        (study_dir / "study.db").unlink()
    else:  # moved away first: rm -r races the driver's next file in the folder
        os.rename(study_dir, tmp_path / "gone")
        shutil.rmtree(tmp_path / "gone")
    wait_for(lambda: (study_dir / "study.db").exists(), what="the database written again")
    second = run_cli("run", "fast.yaml", cwd=tmp_path)  # second driver (the new folder is held)
    assert second.returncode == 2 and "being run by another process" in second.stderr
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err
    assert "was deleted (or moved) while the study ran: written again from the open" in err
    trials = read_trials(study_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 24
    assert len({t.params["x"] for t in trials}) == 24
    shown = run_cli("best", str(study_dir))
    assert shown.returncode == 0, shown.stderr


@pytest.mark.parametrize("also", [(), ("study.db-shm",)])
def test_deleting_the_write_ahead_log_then_a_kill_9_loses_no_finished_trial(tmp_path, also):
    """A helper's overnight trial: study.db stayed an empty 4 KB file (nothing checkpointed
    during a short study), so deleting study.db-wal and then any crash (kill -9, the OOM
    killer) lost every trial, and while it ran ``trials`` said "holds no study yet". Each
    finished trial is now checkpointed into study.db, and a deleted log is folded into it
    and made afresh, with a warning."""
    fast_study(tmp_path, trials=40, sleep=0.3)
    study_dir = tmp_path / "logs" / "fast"
    driver = subprocess.Popen(
        cli_cmd("run", "fast.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: count(study_dir, "COMPLETE") >= 3, what="three trials")
    for name in ("study.db-wal", *also):
        (study_dir / name).unlink()
    shown = run_cli("trials", str(study_dir))  # it waits for the driver's rewrite, if it must
    assert shown.returncode == 0, shown.stderr
    wait_for(lambda: (study_dir / "study.db-wal").exists(), what="the log made afresh")
    wait_for(lambda: count(study_dir, "COMPLETE") >= 6, what="three more trials")
    seen = count(study_dir, "COMPLETE")  # a reader sees them while the study runs
    driver.kill()
    _, err = driver.communicate(timeout=60)
    assert "study.db-wal was deleted (or replaced) while the study ran" in err, err
    assert count(study_dir, "COMPLETE") >= seen >= 6  # the kill -9 lost none of them
    again = run_cli("run", "fast.yaml", "study.trials=8", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    trials = read_trials(study_dir)
    assert sum(t.state is TrialState.COMPLETE for t in trials) == 8


LOG_DELETED_UNDER_READERS = """
import os, sqlite3, sys, warnings
from pathlib import Path
from torchtune_hp.storage import Storage
from torchtune_hp.trial import Origin

warnings.simplefilter("ignore")
p = Path(sys.argv[1])
driver = Storage(p)
driver.create_trial({"x": 1}, Origin.SAMPLER)
follower = Storage(p, read_only=True)  # a DDP rank > 0 reads for the whole run
follower.trials()
held = sqlite3.connect(f"file:{p}?mode=ro", uri=True)  # a read left open (a DB browser)
held.execute("BEGIN")
held.execute("SELECT * FROM trials").fetchall()
driver.create_trial({"x": 2}, Origin.SAMPLER)
for name in sys.argv[2:]:
    os.unlink(p.with_name(p.name + name))
driver.create_trial({"x": 3}, Origin.SAMPLER)
print(len(follower.trials()), len(Storage(p, read_only=True).trials()), flush=True)
driver.create_trial({"x": 4}, Origin.SAMPLER)
print(len(follower.trials()), flush=True)
os._exit(0)  # a kill -9: nothing closed
"""


@pytest.mark.parametrize("deleted", [("-wal",), ("-wal", "-shm")])
def test_a_log_deleted_under_open_readers_then_a_crash_loses_nothing(tmp_path, deleted):
    """A review of the first fix: with a reader holding part of the log a checkpoint cannot
    fold it in, and one forced anyway, then a crash, left a malformed study.db; a reader open
    since before the deletion (a DDP follower) then read the replaced file for ever. The
    database is written again whole through the driver's connection, and readers follow."""
    script = tmp_path / "s.py"
    script.write_text(LOG_DELETED_UNDER_READERS)
    db = tmp_path / "study.db"
    out = subprocess.run(
        [sys.executable, str(script), str(db), *deleted], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "3", "4"]  # the follower and a new reader see it all
    assert [t.params["x"] for t in read_trials(db.parent)] == [1, 2, 3, 4]


SLOW_REPORTER = """
import argparse, json, time
import torchtune_hp
p = argparse.ArgumentParser()
p.add_argument("--x", type=float)
p.add_argument("--y", type=float)
a = p.parse_args()
for epoch in range(3):
    time.sleep(0.5)
    torchtune_hp.report(loss=a.x + a.y + 1.0 / (epoch + 1), step=epoch)
print(json.dumps({"loss": a.x + a.y}))
"""


def test_trials_whose_folders_are_deleted_while_they_run_end_with_their_results(tmp_path):
    """``rm -r logs/<study>`` while two script trials run: each lost its logs and the folder
    its reports go to, and ended FAILED ('exit code 1; stderr:' and nothing after, or 'never
    reported the metric'), using up the budget. The trial's next report makes its folder
    again, the driver reads its logs through the files it holds and writes them back, and
    every trial ends COMPLETE with all its reports."""
    (tmp_path / "slow.py").write_text(SLOW_REPORTER)
    command_recipe(tmp_path, ["python", "slow.py"], trials=6, executor={"workers": 2})
    study_dir = tmp_path / "logs" / "sub"
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: count(study_dir, "COMPLETE") >= 2, what="two trials")
    wait_for(lambda: (study_dir / "trial_0003").is_dir(), what="trials 2 and 3 running")
    os.rename(study_dir, tmp_path / "gone")
    shutil.rmtree(tmp_path / "gone")
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err
    # a trial whose folder went between its making and its start could not start: not
    # counted, and the study went on
    trials = [t for t in read_trials(study_dir) if t.interruption is not Interruption.NOT_STARTED]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6, [t.error for t in trials]
    for t in trials:
        assert sorted(t.intermediate) == [0, 1, 2]
        assert t.value == pytest.approx(t.params["x"] + t.params["y"])
    for t in trials[3:]:  # trial 3 ran through the deletion: its log is back, whole
        stdout = study_dir / f"trial_{t.number:04d}" / "stdout.log"
        assert json.loads(stdout.read_text())["loss"] == pytest.approx(t.value)


def test_a_report_file_deleted_and_made_again_loses_no_line(tmp_path):
    """The driver's reader of report.jsonl once followed only the path: a line written just
    before the folder was deleted was lost, and a new file that got the deleted one's inode
    number (ext4 reuses them at once) was read from the old offset, mid-line."""
    path = tmp_path / "report.jsonl"
    path.write_text("one\ntwo\n")
    tail = channel.LineTail(path)
    assert tail.new_lines() == ["one", "two"]
    with open(path, "a") as f:
        f.write("three\n")  # not read yet when the file goes
    path.unlink()
    path.write_text("new\n")  # made again, shorter than where the reader was
    assert list(tail.all_new_lines()) == ["three", "new"]
    with open(path, "a") as f:
        f.write("more\n")
    assert tail.new_lines() == ["more"]
    # held from the trial's start: a first report whose folder goes before any read is read
    early = channel.LineTail(tmp_path / "early.jsonl")
    early.hold()
    with open(tmp_path / "early.jsonl", "a") as f:
        f.write("first\n")
    (tmp_path / "early.jsonl").unlink()
    assert early.new_lines() == ["first"]


def test_a_script_that_exits_silently_says_so(tmp_path):
    """Its error read 'exit code 3; stderr:' and nothing after, as if cut off."""
    command_recipe(tmp_path, ["python", "-c", "import sys; sys.exit(3)"], trials=1)
    run_cli("run", "recipe.yaml", cwd=tmp_path)
    (trial,) = read_trials(tmp_path / "logs" / "sub")
    assert trial.state is TrialState.FAILED and trial.error == "exit code 3; nothing on stderr"


def test_a_database_replaced_while_the_study_runs_is_left_alone_and_nothing_lost(tmp_path):
    fast_study(tmp_path, trials=12, sleep=0.3)
    study_dir = tmp_path / "logs" / "fast"
    driver = subprocess.Popen(
        cli_cmd("run", "fast.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: count(study_dir, "COMPLETE") >= 3, what="three trials")
    (tmp_path / "theirs").write_bytes(b"somebody else's file")
    os.replace(tmp_path / "theirs", study_dir / "study.db")
    _, err = driver.communicate(timeout=120)
    assert driver.returncode != 0 and "was replaced by another file" in err, err
    assert (study_dir / "study.db").read_bytes() == b"somebody else's file"
    saved = study_dir / "study.db.open-copy"
    assert str(saved) in err
    assert count_in(saved) >= 3


def count_in(db: Path) -> int:
    """COMPLETE trials in a database file of any name."""
    from torchtune_hp.storage import Storage

    storage = Storage(db, read_only=True)
    try:
        return sum(t.state is TrialState.COMPLETE for t in storage.trials())
    finally:
        storage.close()


def test_kill_9_releases_the_study_at_once(tmp_path):
    fast_study(tmp_path, trials=6, sleep=0.3)
    study_dir = tmp_path / "logs" / "fast"
    proc = subprocess.Popen(cli_cmd("run", "fast.yaml"), cwd=tmp_path, stderr=subprocess.PIPE)
    wait_for(lambda: count(study_dir, "COMPLETE") >= 1, what="a first trial")
    proc.kill()
    proc.wait()
    start = time.monotonic()
    again = run_cli("run", "fast.yaml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - start < 30
    assert count(study_dir, "COMPLETE") == 6


def test_a_study_on_read_only_media_is_read(tmp_path):
    fast_study(tmp_path, trials=3)
    assert run_cli("run", "fast.yaml", cwd=tmp_path).returncode == 0
    out = private_mounts(
        f"""
        mount --bind {tmp_path}/logs {tmp_path}/logs
        mount -o remount,bind,ro {tmp_path}/logs
        cd {tmp_path}
        {sys.executable} -m torchtune_hp trials logs/fast --format json > t.json
        {sys.executable} -m torchtune_hp best logs/fast > b.json
        """
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads((tmp_path / "t.json").read_text())) == 3
    assert json.loads((tmp_path / "b.json").read_text())["number"] in (0, 1, 2)


# -- 3. processes never outlive the driver; every stop signal is a clean stop --------------------
def test_kill_9_of_the_driver_takes_its_trials_with_it_and_the_resume_waits_for_them(tmp_path):
    """Trials that ignore SIGTERM, two at a time; the driver is killed with -9 and restarted
    at once: the new run starts nothing while an old trial process still lives. The killed
    trials never reported, and end at the driver's last heartbeat: their seconds are about
    the ones they ran, not 0."""
    command_recipe(
        tmp_path,
        ["python", FAKE, "--how", "json", "--sleep", "60", "--ignore_term", "1"],
        trials=2,
        executor={"workers": 2, "devices": "cpu"},
    )
    study_dir = tmp_path / "logs" / "sub"
    driver = subprocess.Popen(cli_cmd("run", "recipe.yaml"), cwd=tmp_path, stderr=subprocess.PIPE)
    wait_for(lambda: len(seen_pids(study_dir)) == 2, what="two trials")
    started = time.monotonic()
    time.sleep(HEARTBEAT_S + 1.5)
    old = seen_pids(study_dir)
    driver.kill()
    ran = time.monotonic() - started
    driver.wait()
    raw = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    raw["objective"]["command"] = ["python", FAKE, "--how", "json", "--sleep", "0.5"]
    write(tmp_path / "recipe.yaml", raw)
    resumed = subprocess.Popen(cli_cmd("run", "recipe.yaml"), cwd=tmp_path, stderr=subprocess.PIPE)
    wait_for(lambda: len(seen_pids(study_dir)) > 2, what="a retried trial")
    assert not [pid for pid in old if pid_alive(pid)], "a retry started beside its old process"
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    trials = read_trials(study_dir)
    assert sum(t.state is TrialState.COMPLETE for t in trials) == 2
    assert {t.interruption for t in trials[:2]} == {Interruption.DIED}
    for t in trials[:2]:
        assert HEARTBEAT_S - 0.5 <= t.duration_s <= ran + 1.0, (t.duration_s, ran)


STRAY = """
import os, time
child = os.fork()
if child == 0:
    os.setsid()  # a session of its own: out of the trial's process group
    if os.fork() == 0:  # and a daemon's second fork: orphaned at once
        with open("stray.pid.part", "w") as f:
            f.write(str(os.getpid()))
        os.replace("stray.pid.part", "stray.pid")
        time.sleep(120)
    os._exit(0)
os.waitpid(child, 0)
while not os.path.exists("stray.pid"):
    time.sleep(0.01)
print('{"loss": 0.5}')
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_process_that_leaves_the_trials_group_ends_with_the_trial(tmp_path, workers):
    """A script whose helper starts a session of its own (setsid, a daemon's double fork)
    left it running after the trial ended, outside the group the guard ends; the guard now
    adopts such orphans and ends them with the trial."""
    (tmp_path / "stray.py").write_text(STRAY)
    executor = {"workers": workers, "devices": "cpu"}
    command_recipe(tmp_path, ["python", str(tmp_path / "stray.py")], trials=2, executor=executor)
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    strays = [int(p.read_text()) for p in (tmp_path / "logs" / "sub").glob("trial_*/stray.pid")]
    assert len(strays) == 2
    wait_for(lambda: not [p for p in strays if pid_alive(p)], timeout=5, what="the strays to end")
    assert [t.state for t in read_trials(tmp_path / "logs" / "sub")] == [TrialState.COMPLETE] * 2


def two_long_trials_recipe(tmp_path: Path, *extra: str) -> Path:
    """``recipe.yaml``: 3 trials of a minute each, two at a time (``extra``: more arguments of
    fake_train.py); returns the study folder."""
    command_recipe(
        tmp_path,
        ["python", FAKE, "--how", "json", "--sleep", "60", *extra],
        trials=3,
        executor={"workers": 2, "devices": "cpu"},
    )
    return tmp_path / "logs" / "sub"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_every_stop_signal_is_a_clean_stop(tmp_path, sig):
    study_dir = two_long_trials_recipe(tmp_path)
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: len(seen_pids(study_dir)) == 2, what="two trials")
    pids = seen_pids(study_dir)
    driver.send_signal(sig)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"interrupted ({signal.Signals(sig).name})")
    assert not [pid for pid in pids if pid_alive(pid)]
    trials = read_trials(study_dir)
    assert len(trials) == 2
    assert all(
        t.state is TrialState.FAILED and t.interruption is Interruption.STOPPED for t in trials
    )


@pytest.mark.parametrize("script", ["dies", "exits 0"])
def test_a_stop_sent_to_every_process_at_once_interrupts_the_trials_and_they_run_again(
    tmp_path, script
):
    """Slurm's scancel, a preemption or ``systemctl stop`` signal the trial processes as well as
    the driver, in no set order: a trial that ends on the SIGTERM is the study's stop, not a
    failure of its own (it used to be recorded FAILED, counted, and never run again). Also when
    the script catches the signal and exits 0 after printing a value, as a Lightning script
    does: that run was cut short, and it used to be recorded COMPLETE at that value."""
    catches = script == "exits 0"
    study_dir = two_long_trials_recipe(tmp_path, *(["--exit_on_term", "1"] if catches else []))
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    pids = wait_seen(study_dir, 2, driver)
    for pid in pids:  # the trials first: the driver sees them end before its own signal
        if catches:  # every process of the trial, as scancel signals them
            os.killpg(os.getpgid(pid), signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 128 + signal.SIGTERM, err
    trials = read_trials(study_dir)
    assert [(t.state, t.interruption) for t in trials] == [
        (TrialState.FAILED, Interruption.STOPPED)
    ] * 2
    stopped = sorted(json.dumps(t.params) for t in trials)
    raw = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    raw["objective"]["command"] = ["python", FAKE, "--how", "json", "--sleep", "0"]
    write(tmp_path / "recipe.yaml", raw)
    assert run_cli("run", "recipe.yaml", cwd=tmp_path).returncode == 0
    again = [t for t in read_trials(study_dir)[2:] if t.state is TrialState.COMPLETE]
    assert len(again) == 3 and sorted(json.dumps(t.params) for t in again[:2]) == stopped


def test_a_stop_sent_to_a_trials_guard_alone_stops_the_trial(tmp_path):
    """``kill $(pgrep -f train.py)`` finds the trial's guard first (its command line holds the
    script's): the guard did not pass the SIGTERM on, the script trained to its end, and its
    finished run was recorded FAILED as 'ended by the signal'. The stop now reaches the
    script, which ends by it (FAILED, the signal named); the study goes on."""
    study_dir = two_long_trials_recipe(tmp_path)
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    script = wait_seen(study_dir, 1, driver)[0]
    with open(f"/proc/{script}/stat") as f:
        guard = int(f.read().rsplit(")", 1)[1].split()[1])  # the script's parent
    os.kill(guard, signal.SIGTERM)
    wait_for(lambda: not pid_alive(script), timeout=20, what="the script to stop")
    wait_for(lambda: count(study_dir, "FAILED") >= 1, what="the trial to be recorded")
    driver.send_signal(signal.SIGTERM)
    driver.communicate(timeout=60)
    failed = [t for t in read_trials(study_dir) if t.state is TrialState.FAILED]
    stopped = [t for t in failed if t.interruption is None]  # the rest: the driver's stop
    assert len(stopped) == 1, [t.error for t in failed]
    assert stopped[0].error == "exit code -15 (SIGTERM); nothing on stderr", stopped[0].error


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler of its own for ``sig`` (or has ended)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(line for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return True
    return bool(int(caught.split()[1], 16) >> (sig - 1) & 1)


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.3, 0.8])
def test_ctrl_c_during_start_up_is_one_line(tmp_path, delay):
    """From the moment the command's code runs (its first act is taking the stop signals, which
    Python leaves at their defaults until then) through the heavy imports. The interpreter's own
    start (site, .pth files) comes before any code of ours and is Python's to report."""
    fast_study(tmp_path, trials=2)
    proc = subprocess.Popen(
        cli_cmd("run", "fast.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    if proc.returncode != 0:  # it may have finished first
        assert proc.returncode in (130, -signal.SIGINT), err
        said = [line for line in err.splitlines() if line.startswith("interrupted")]
        assert len(said) <= 1
        # before any study opened it says so, not that running trials were marked
        study_dir = tmp_path / "logs" / "fast"
        if said and "no study had started" in said[0]:
            assert not (study_dir / "study.db").exists() or not read_trials(study_dir)


# -- 4. paths and files --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "-x", "n" * 101])
def test_a_study_name_is_one_safe_folder_name(tmp_path, name):
    fast_study(tmp_path, trials=1)
    result = run_cli("run", "fast.yaml", f"study.name={name}", cwd=tmp_path)
    assert result.returncode == 2 and "study.name" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.py", "fast.yaml"]


@pytest.mark.parametrize("left", ["no study.db", "an empty study.db"])
def test_a_trial_result_only_comes_from_its_own_process(tmp_path, left):
    """study.db deleted, trial folders kept: the old files are set aside, never read. Also
    when study.db is there but holds nothing (its log, where every trial was, deleted): the
    old trial folders were reused in silence, their logs overwritten."""
    import sqlite3

    command_recipe(tmp_path, ["python", FAKE, "--how", "report"], trials=2)
    assert run_cli("run", "recipe.yaml", cwd=tmp_path).returncode == 0
    study_dir = tmp_path / "logs" / "sub"
    old = {p.name: digest(p) for p in (study_dir / "trial_0000").iterdir() if p.is_file()}
    for f in study_dir.glob("study.db*"):
        f.unlink()
    if left == "an empty study.db":  # as a WAL database is before its first checkpoint
        sqlite3.connect(study_dir / "study.db").execute("PRAGMA journal_mode=WAL").close()
    raw = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    raw["objective"]["command"] = ["python", FAKE, "--how", "silent"]
    write(tmp_path / "recipe.yaml", raw)
    result = run_cli("run", "recipe.yaml", "study.fail_fast=0", cwd=tmp_path)
    assert result.returncode == 1  # nothing completed: the script reported nothing
    assert f"held files of an earlier study but {left}: moved them" in result.stderr
    trials = read_trials(study_dir)
    assert all(t.state is TrialState.FAILED and "never reported" in t.error for t in trials)
    (aside,) = tmp_path.joinpath("logs").glob("sub.replaced-*")
    kept = {p.name: digest(p) for p in (aside / "trial_0000").iterdir() if p.is_file()}
    assert kept == old  # every byte of the old study kept


def test_writes_never_follow_a_link_planted_in_the_study_folder(tmp_path):
    fast_study(tmp_path, trials=1)
    assert run_cli("run", "fast.yaml", cwd=tmp_path).returncode == 0
    study_dir = tmp_path / "logs" / "fast"
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    victim_dir = tmp_path / "precious_dir"
    victim_dir.mkdir()
    (study_dir / "trial_0001").symlink_to(victim_dir)  # the next trial's folder
    result = run_cli("run", "fast.yaml", "study.trials=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(victim_dir.iterdir()) == []  # trial 1 wrote into a folder of its own
    assert (study_dir / "trial_0001").is_dir() and not (study_dir / "trial_0001").is_symlink()
    (study_dir / "recipe.yaml").unlink()
    (study_dir / "recipe.yaml").symlink_to(victim)
    result = run_cli("run", "fast.yaml", "study.trials=3", cwd=tmp_path)
    assert result.returncode == 2 and "symbolic link" in result.stderr, result.stderr
    assert victim.read_text() == "keep me"


def test_cp_never_writes_outside_its_destination(tmp_path):
    src = tmp_path / "src" / "recipes"
    src.mkdir(parents=True)
    (tmp_path / "src" / "helper.py").write_text("print('{\"loss\": 1.0}')\n")
    write(
        src / "r.yaml",
        {
            "study": {"name": "r"},
            "space": {"x": {"type": "float", "low": 0, "high": 1}},
            "objective": {"command": ["python", "../helper.py"]},
        },
    )
    dest = tmp_path / "dest" / "inner"
    result = run_cli("cp", str(src / "r.yaml"), str(dest) + "/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "outside the recipe's folder" in result.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["r.yaml"]
    assert not (tmp_path / "dest" / "helper.py").exists()


def test_a_damaged_or_foreign_database_is_refused_and_left_untouched(tmp_path):
    fast_study(tmp_path, trials=3)
    assert run_cli("run", "fast.yaml", cwd=tmp_path).returncode == 0
    db = tmp_path / "logs" / "fast" / "study.db"
    whole = db.read_bytes()
    for content in (whole[: len(whole) // 2], b"this is not a database at all" * 100):
        db.write_bytes(content)
        before = digest(db)
        for args in (["run", "fast.yaml", "study.trials=5"], ["trials", str(db.parent)]):
            result = run_cli(*args, cwd=tmp_path)
            assert result.returncode == 2, result.stderr
            assert "not a study database, or damaged" in result.stderr
            assert "left untouched" in result.stderr and "Traceback" not in result.stderr
            assert digest(db) == before


def test_bad_files_and_values_are_one_line_exit_2_and_store_nothing(tmp_path):
    fast_study(tmp_path, trials=1)
    (tmp_path / "logfile").write_text("a file where the logdir should be")
    cases = [
        (["logdir=logfile"], "the logdir is a file"),
        (["study.seed=-1"], "study.seed"),
        ([f"study.seed={2**64}"], "study.seed"),
    ]
    for overrides, phrase in cases:
        result = run_cli("run", "fast.yaml", *overrides, cwd=tmp_path)
        assert result.returncode == 2 and phrase in result.stderr, (overrides, result.stderr)
        assert "Traceback" not in result.stderr
    # validate catches what the night's run would fail on (it said OK), creating nothing
    deep = "/".join(["deep", "d" * 200, "d" * 200, "d" * 100])  # SQLite: 504 bytes at most
    for logdir, phrase in (
        ("logfile", "the logdir is a file"),
        ("logfile/a/b", "above the"),
        (deep, "too long a path for SQLite"),  # it said 'unable to open', the folder made
    ):
        for command in ("validate", "run"):
            result = run_cli(command, "fast.yaml", f"logdir={logdir}", cwd=tmp_path)
            assert result.returncode == 2 and phrase in result.stderr, (logdir, result.stderr)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "deep").exists()
    (tmp_path / "latin1.yaml").write_bytes("study: {name: caf\xe9}\n".encode("latin-1"))
    result = run_cli("run", "latin1.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "not UTF-8" in result.stderr
    (tmp_path / "fast.py").write_text("import time\n\ndef train(trial, sleep=0):\n    return (\n")
    result = run_cli("run", "fast.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "fast.py:4: SyntaxError" in result.stderr, result.stderr
    (tmp_path / "fast.py").write_text("import no_such_module_here\n\ndef train(trial): pass\n")
    result = run_cli("validate", "fast.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "fast.py:1: ModuleNotFoundError: No module named 'no_such_module_here'" in result.stderr


def test_a_read_only_logdir_and_a_full_disk(tmp_path):
    """Read-only: exit 2 before anything runs. Full: the study stops with one line, every
    finished trial is kept, and the same command resumes once there is space."""
    fast_study(tmp_path, trials=400)
    out = private_mounts(
        f"""
        cd {tmp_path}
        mkdir -p ro small
        mount --bind ro ro && mount -o remount,bind,ro ro
        set +e
        {sys.executable} -m torchtune_hp run fast.yaml logdir=ro/logs 2> ro.err; echo $? > ro.rc
        mount -t tmpfs -o size=400k tmpfs small
        {sys.executable} -m torchtune_hp run fast.yaml logdir=small 2> full.err; echo $? > full.rc
        {sys.executable} -m torchtune_hp trials small/fast --format json > full.json
        mount -o remount,size=64m small
        {sys.executable} -m torchtune_hp run fast.yaml logdir=small 2> again.err; echo $? > again.rc
        {sys.executable} -m torchtune_hp trials small/fast --format json > again.json
        """
    )
    assert out.returncode == 0, out.stderr
    read = lambda name: (tmp_path / name).read_text()  # noqa: E731
    assert read("ro.rc").strip() == "2", read("ro.err")
    assert "not writable" in read("ro.err") or "Read-only" in read("ro.err")
    assert read("full.rc").strip() == "2", read("full.err")
    last = read("full.err").strip().splitlines()[-1]
    assert last.startswith("error: ") and ("No space left" in last or "disk is full" in last)
    assert "Traceback" not in read("full.err")
    before = {t["number"]: t for t in json.loads(read("full.json")) if t["state"] == "COMPLETE"}
    assert 10 < len(before) < 400
    assert read("again.rc").strip() == "0", read("again.err")
    after = {t["number"]: t for t in json.loads(read("again.json"))}
    assert sum(t["state"] == "COMPLETE" for t in after.values()) == 400
    for number, t in before.items():  # every finished trial kept as it was
        assert after[number]["value"] == t["value"] and after[number]["params"] == t["params"]


# -- 5. mistakes caught before they burn the budget ----------------------------------------------
def test_a_missing_or_non_executable_command_is_caught_before_any_trial(tmp_path):
    for command, phrase in [
        (["no-such-program-xyz", "train.py"], "neither a file beside the recipe nor on PATH"),
        (["./train.sh"], "not executable"),
        (["python", "/nowhere/main.py"], "'/nowhere/main.py' does not exist\n"),
        (["python", "mian.py"], "'mian.py' does not exist beside the recipe"),
    ]:
        (tmp_path / "train.sh").write_text("#!/bin/sh\necho '{\"loss\": 1}'\n")
        (tmp_path / "main.py").write_text("print('{\"loss\": 1}')\n")
        command_recipe(tmp_path, command, trials=2)
        for verb in ("validate", "run"):
            result = run_cli(verb, "recipe.yaml", cwd=tmp_path)
            assert result.returncode == 2 and phrase in result.stderr, (verb, result.stderr)
            assert "objective.command" in result.stderr
    assert "did you mean 'main.py'" in result.stderr
    assert not (tmp_path / "logs").exists()


def test_a_trial_that_cannot_start_does_not_use_up_the_budget(tmp_path):
    """The program vanishes mid-study (the first trial deletes it): later trials cannot start;
    they are not counted, and the study stops instead of starting them for ever."""
    program = tmp_path / "run.sh"
    program.write_text(f'#!/bin/sh\nrm -- "$0"\nexec {sys.executable} {FAKE} "$@"\n')
    program.chmod(0o755)
    command_recipe(tmp_path, ["./run.sh", "--how", "json"], trials=3)
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 1 and "could not start" in result.stderr, result.stderr
    trials = read_trials(tmp_path / "logs" / "sub")
    assert trials[0].state is TrialState.COMPLETE
    assert all(t.interruption is Interruption.NOT_STARTED for t in trials[1:])
    program.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    program.chmod(0o755)
    again = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    done = [t for t in read_trials(tmp_path / "logs" / "sub") if t.state is TrialState.COMPLETE]
    assert len(done) == 3  # the trials that never started did not count


def test_the_same_failure_with_each_trials_own_values_stops_the_study(tmp_path):
    """A parameter the script does not take failed every trial with its own sampled value in
    the message ('unrecognized arguments: --model.momentum=0.968...'): each looked different,
    and the whole budget was spent."""
    fast_study(tmp_path, trials=8)
    (tmp_path / "fast.py").write_text(
        "def train(trial, sleep=0):\n"
        "    raise ValueError(f'unrecognized arguments: --momentum={trial.params[\"x\"]}')\n"
    )
    result = run_cli("run", "fast.yaml", cwd=tmp_path)
    assert result.returncode == 1 and "all failed with the same error" in result.stderr
    assert count(tmp_path / "logs" / "fast", "FAILED") == 3
    # errors that differ in more than their numbers are different errors: the budget is used
    (tmp_path / "fast.py").write_text(
        "def train(trial, sleep=0):\n    raise ValueError('odd' if trial.number % 2 else 'even')\n"
    )
    other = run_cli("run", "fast.yaml", "study.name=other", "study.trials=4", cwd=tmp_path)
    assert other.returncode == 1 and "same error" not in other.stderr
    assert count(tmp_path / "logs" / "other", "FAILED") == 4


def test_an_errors_kind_leaves_out_the_trials_own_values_and_numbers():
    from torchtune_hp.executors.loop import error_kind
    from torchtune_hp.trial import FrozenTrial

    def failed(params, last_line):
        return FrozenTrial(0, TrialState.FAILED, params, error=f"Traceback ...\n{last_line}")

    said = "error: unrecognized arguments: --model.opt={} --model.lr={}"
    adam = failed({"opt": "adam", "lr": 0.1}, said.format("adam", 0.1))
    sgd = failed({"opt": "sgd", "lr": 0.02}, said.format("sgd", 0.02))
    assert error_kind(adam) == error_kind(sgd) == said.format("#", "#")
    at = failed({}, "ValueError: <Model object at 0x7f3a1b2c>")
    assert error_kind(at) == "ValueError: <Model object at #>"
    other = failed({"opt": "adam"}, "ImportError: No module named adamw")  # not its value
    assert error_kind(other) == "ImportError: No module named adamw"


def test_the_same_failure_at_the_start_stops_the_study(tmp_path):
    fast_study(tmp_path, trials=20)
    (tmp_path / "fast.py").write_text(
        "def train(trial, sleep=0):\n    raise ImportError('No module named lightning_extra')\n"
    )
    result = run_cli("run", "fast.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "all failed with the same error" in result.stderr
    assert "ImportError: No module named lightning_extra" in result.stderr
    assert "After a fix, run the same command to go on" in result.stderr  # 17 trials left
    assert count(tmp_path / "logs" / "fast", "FAILED") == 3
    off = run_cli("run", "fast.yaml", "study.fail_fast=0", "study.trials=5", cwd=tmp_path)
    assert off.returncode == 1 and count(tmp_path / "logs" / "fast", "FAILED") == 5
    # stopped on its last trial: the same command would train nothing, so it says what would
    used = run_cli("run", "fast.yaml", "study.name=used", "study.trials=3", cwd=tmp_path)
    assert "all failed with the same error" in used.stderr
    assert "Its 3 trials are all used (failed ones count), so after a fix add " in used.stderr
    assert "study.trials=13 to go on" in used.stderr and "run the same command" not in used.stderr


def test_recipes_are_strict_about_types_and_repeated_keys(tmp_path):
    fast_study(tmp_path, trials=1)
    result = run_cli("run", "fast.yaml", 'space.x.log="false"', cwd=tmp_path)
    assert result.returncode == 2 and "log must be true or false, got 'false'" in result.stderr
    text = (tmp_path / "fast.yaml").read_text()
    (tmp_path / "twice.yaml").write_text(text.replace("study:\n", "study:\n  trials: 3\n", 1))
    result = run_cli("validate", "twice.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "twice.yaml: study.trials: key 'trials' is given twice, on lines 2 and" in result.stderr
    nested = text.replace("    low: 0.0\n", "    low: 0.0\n    low: 0.5\n", 1)
    assert nested != text
    (tmp_path / "twice.yaml").write_text(nested)
    result = run_cli("validate", "twice.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "twice.yaml: space.x.low: key 'low' is given" in result.stderr


def test_a_command_keeps_the_python_of_another_venv(tmp_path):
    """A recipe pointing at another environment's python runs the trial there (the venv's
    bin/python is a link to the base interpreter: it must not be followed)."""
    venv = tmp_path / "other-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    assert python.is_symlink()
    command_recipe(tmp_path, [str(python), FAKE, "--how", "json"], trials=1)
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads((tmp_path / "logs" / "sub" / "trial_0000" / "seen.json").read_text())
    assert Path(seen["prefix"]) == venv


def test_outcome_from_a_result_file_is_validated():
    assert Outcome.from_json({"state": "COMPLETE", "value": 0.5}) == Outcome.complete(0.5)
    assert Outcome.from_json({"state": "COMPLETE", "value": "x"}).state is TrialState.FAILED
    assert Outcome.from_json(["garbage"]).state is TrialState.FAILED
    assert Outcome.from_json({"state": "PRUNED"}) == Outcome.pruned()


# -- what a trial does to its own folder, and other findings of a user-style review -------------
EVIL = """
import json, os, sys
mode = sys.argv[1].split("=", 1)[1]
deep = "[" * 200000 + "]" * 200000
if mode == "rm_stderr":
    os.unlink("stderr.log")
elif mode == "rm_folder":
    import shutil
    shutil.rmtree(os.getcwd())
elif mode == "dir_reports":
    os.mkdir("report.jsonl")
elif mode == "dangling_events":
    os.symlink("/nonexistent/x", "events.out.tfevents.1.x")
elif mode == "deep_stdout":
    print('{"loss": ' + deep + "}")
elif mode == "deep_report":
    with open("report.jsonl", "a") as f:
        f.write(json.dumps({"launch": os.environ["TORCHTUNE_HP_LAUNCH"], "seq": 1, "step": 0,
                            "values": {}})[:-1] + ', "x": ' + deep + "}\\n")
elif mode == "sigkill":
    os.kill(os.getpid(), 9)
elif mode == "ok":
    print(json.dumps({"loss": 0.5}))
"""


@pytest.mark.parametrize(
    "mode",
    ["rm_stderr", "rm_folder", "dir_reports", "dangling_events", "deep_stdout", "deep_report"],
)
def test_what_a_trial_does_to_its_folder_ends_only_that_trial(tmp_path, mode):
    (tmp_path / "evil.py").write_text(EVIL)
    command_recipe(tmp_path, ["python", "evil.py"], trials=2)
    raw = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    raw["objective"]["args"] = "hydra"
    raw["sampler"] = {"name": "grid", "shuffle": False}
    raw["space"] = {"mode": {"type": "categorical", "choices": [mode, "ok"]}}
    write(tmp_path / "recipe.yaml", raw)
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    bad, good = read_trials(tmp_path / "logs" / "sub")
    assert bad.state is TrialState.FAILED and bad.error and not bad.interrupted
    assert good.state is TrialState.COMPLETE and good.value == 0.5


def test_a_trial_killed_by_sigkill_says_so(tmp_path):
    """What the OOM killer does: the trial's error is its exit by signal 9."""
    (tmp_path / "evil.py").write_text(EVIL)
    command_recipe(tmp_path, ["python", "evil.py", "mode=sigkill"], trials=1)
    raw = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    raw["space"] = {"x": {"type": "fixed", "value": 1}}
    write(tmp_path / "recipe.yaml", raw)
    assert run_cli("run", "recipe.yaml", cwd=tmp_path).returncode == 1
    (trial,) = read_trials(tmp_path / "logs" / "sub")
    assert trial.error.startswith("exit code -9"), trial.error


class Prickly(dict):
    def __contains__(self, key):
        raise RuntimeError("no looking inside")


class BadItem:
    @property
    def item(self):
        raise RuntimeError("no item")


def test_in_process_returns_that_cannot_be_read_fail_only_their_trial(tmp_path):
    outs = iter([Prickly(), BadItem(), 0.25])
    with Study("odd", {"x": Float(0, 1)}, logdir=tmp_path, seed=0) as study:
        with pytest.warns(UserWarning):
            study.optimize(lambda trial: next(outs), n_trials=3, fail_fast=0)
        states = [t.state for t in study.trials]
        assert states == [TrialState.FAILED] * 2 + [TrialState.COMPLETE]


def test_sys_exit_in_an_in_process_objective_fails_its_trial_as_in_a_worker(tmp_path):
    """A recipe's objective that calls sys.exit() in-process ended the run with that code
    (0 with no COMPLETE trial: CI read success) and its trial ran again next time, so an
    objective that always exits kept every run at that trial. It fails only its trial, as in
    a worker process, with where it was called, and the study goes on."""
    source = (
        "import sys\n\ndef train(trial):\n"
        "    if trial.number in (1, 2):\n        sys.exit(3 if trial.number == 1 else 0)\n"
        "    return trial.params['x']\n"
    )
    function_recipe(tmp_path, source, "ex", trials=4)
    result = run_cli("run", "r.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = read_trials(tmp_path / "logs" / "ex")
    assert [t.state for t in trials] == [TrialState.COMPLETE] + [TrialState.FAILED] * 2 + [
        TrialState.COMPLETE
    ]
    for t, code in ((trials[1], 3), (trials[2], 0)):
        assert t.interruption is None
        called = f"the objective called sys.exit({code}) instead of returning a value"
        assert t.error.endswith(called)
        assert "in train" in t.error  # the traceback says where


OWN_HANDLER = """
import os, signal, sys, threading, time
from torchtune_hp import Float, Study

signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))  # the program's own policy
threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
study = Study("own", {"x": Float(0, 1)}, logdir=sys.argv[1], seed=0)
study.optimize(lambda trial: time.sleep(1.0) or trial.params["x"], n_trials=8)
"""


def test_a_programs_own_signal_handler_keeps_its_meaning(tmp_path):
    (tmp_path / "own.py").write_text(OWN_HANDLER)
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(tmp_path / "own.py"), str(tmp_path)], capture_output=True, timeout=120
    )
    assert result.returncode == 143 and time.monotonic() - t0 < 20, result.stderr
    trials = read_trials(tmp_path / "own")
    assert len(trials) < 8 and trials[-1].interruption is Interruption.STOPPED


OWN_HANDLER_IN_A_RECIPE = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))  # the objective module's own policy

def train(trial):
    time.sleep(1.0)
    return trial.params["x"]
"""


def test_a_recipe_objectives_own_signal_handler_keeps_its_meaning(tmp_path):
    """An in-process recipe objective's sys.exit() fails only its trial, but not where the
    objective's module installed a SIGTERM handler of its own: its exit on the signal is the
    program's stop (it was a FAILED trial and the study ran on until SIGKILL)."""
    function_recipe(tmp_path, OWN_HANDLER_IN_A_RECIPE, "own", trials=8)
    driver = subprocess.Popen(cli_cmd("run", "r.yaml"), cwd=tmp_path, stderr=subprocess.PIPE)
    wait_for(lambda: count(tmp_path / "logs" / "own", "COMPLETE") >= 1, what="a first trial")
    time.sleep(0.3)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=60) == 143, driver.stderr.read()
    trials = read_trials(tmp_path / "logs" / "own")
    assert len(trials) < 8 and trials[-1].interruption is Interruption.STOPPED
    assert not [t for t in trials if t.state is TrialState.FAILED and t.interruption is None]


def test_told_to_stop_is_pruned_however_the_objective_returns():
    class Always:
        name = "always"

        def prune(self, trial, others, mode):
            return True

    study = Study("p", {"x": Float(0, 1)}, logdir=None, pruner=Always())

    def objective(trial):
        for step in range(5):
            trial.report(1.0, step)
            if trial.should_prune():
                break  # stops without raising TrialPruned
        return 1.0

    study.optimize(objective, n_trials=1)
    assert study.trials[0].state is TrialState.PRUNED  # as in a worker process


LIGHTNING_OBJECTIVE = """
import sys, time
sys.path.insert(0, {tests!r})
import lightning as L
import torch
from tiny_model import Tiny, loaders


class Slow(L.Callback):
    def on_train_batch_end(self, *args):
        time.sleep(0.05)


def train(trial):
    trainer = L.Trainer(max_epochs=1000, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", callbacks=[Slow()])
    open("started", "w").close()
    trainer.fit(Tiny(trial.params["lr"]), *loaders())
    return float(trainer.callback_metrics["val_loss"])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_inside_lightning_training_is_a_stop(tmp_path, sig):
    """Lightning catches KeyboardInterrupt and calls sys.exit(1); the study still knows it was
    a stop: exit 128 + signal, the trial interrupted (stopped), to run again."""
    source = LIGHTNING_OBJECTIVE.format(tests=str(Path(__file__).parent))
    lr = {"lr": {"type": "float", "low": 0.01, "high": 0.1}}
    function_recipe(tmp_path, source, "l", trials=2, space=lr)
    proc = subprocess.Popen(
        cli_cmd("run", "r.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: (tmp_path / "started").exists(), what="training to start")
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    (trial,) = read_trials(tmp_path / "logs" / "l")
    assert trial.interruption is Interruption.STOPPED, trial.error


def test_every_ddp_rank_may_write_the_stop_marker_at_once(tmp_path):
    """Lightning stops every rank on SIGTERM; writers of one channel file in several processes
    at once collided on one temporary name (14 FileExistsError in 168 writes), an error that
    replaced Lightning's own ending of the rank."""
    code = (
        "import sys; from pathlib import Path; from torchtune_hp.executors import channel\n"
        "for _ in range(60): channel.note_stopped(Path(sys.argv[1]), 'abc', 15)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    assert channel.read_stopped(tmp_path, "abc") == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == [channel.STOPPED]


SELF_CLEANING = """
import json, os, signal, subprocess, sys
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)  # ends its own helpers, as many launchers do
helper.wait()
print(json.dumps({"loss": 0.123}))
"""


def test_a_script_that_signals_its_own_group_and_finishes_is_complete(tmp_path):
    """The guard counts a stop signal only from outside the trial's process group: a script
    that ends its helpers with killpg(0, SIGTERM) and then finishes is not a stopped run."""
    (tmp_path / "clean.py").write_text(SELF_CLEANING)
    command_recipe(tmp_path, ["python", "clean.py"], trials=1)
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (trial,) = read_trials(tmp_path / "logs" / "sub")
    assert trial.state is TrialState.COMPLETE and trial.value == 0.123, trial.error


LIGHTNING_SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
import lightning as L
from tiny_model import Tiny, loaders
from torchtune_hp import TuneCallback


class Slow(L.Callback):
    def on_train_batch_end(self, *args):
        time.sleep(0.05)


open("pid", "w").write(str(os.getpid()))
first = os.environ["TORCHTUNE_HP_TRIAL"] == "0"
trainer = L.Trainer(max_epochs=1000 if first else 2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                    callbacks=[TuneCallback(monitor="val_loss"), Slow()])
trainer.fit(Tiny(0.05), *loaders())
print(json.dumps({{"loss": float(trainer.callback_metrics["val_loss"])}}))
"""


def test_a_lightning_script_stopped_half_way_is_not_a_finished_trial(tmp_path):
    """Lightning's trainer catches SIGTERM and exits 0, the trial's last report looking like a
    final value: TuneCallback tells the driver, and the trial is a failure by that signal (the
    driver was not stopped: somebody stopped this trial), not COMPLETE at a half-trained value."""
    (tmp_path / "train.py").write_text(LIGHTNING_SCRIPT.format(tests=str(Path(__file__).parent)))
    command_recipe(tmp_path, ["python", "train.py"], trials=2)
    study_dir = tmp_path / "logs" / "sub"
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    reports = study_dir / "trial_0000" / channel.REPORTS
    wait_for(
        lambda: reports.exists() and len(reports.read_text().splitlines()) >= 2,
        what="two reports of the first trial",
    )
    os.kill(int((study_dir / "trial_0000" / "pid").read_text()), signal.SIGTERM)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err
    first, second = read_trials(study_dir)
    assert first.state is TrialState.FAILED and first.value is None
    assert "exit code 0 after SIGTERM, caught by the script" in first.error, first.error
    assert second.state is TrialState.COMPLETE and sorted(second.intermediate) == [0, 1]


def test_a_damaged_database_with_a_write_ahead_log_is_left_untouched(tmp_path):
    fast_study(tmp_path, trials=60)
    assert run_cli("run", "fast.yaml", cwd=tmp_path).returncode == 0  # all in study.db
    study_dir = tmp_path / "logs" / "fast"
    cmd = cli_cmd("run", "fast.yaml", "study.trials=200", "train.sleep=0.05")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE)
    wait_for(lambda: count(study_dir, "COMPLETE") >= 65, what="some more trials")
    proc.kill()  # leaves study.db-wal behind, holding the latest pages
    proc.wait()
    db, wal = study_dir / "study.db", study_dir / "study.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    with open(db, "r+b") as f:  # garbage over every page but the first
        size = f.seek(0, 2)
        f.seek(4096)
        f.write(b"\xff" * (size - 4096))
    before = (digest(db), digest(wal))
    result = run_cli("run", "fast.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "damaged" in result.stderr, result.stderr
    assert (digest(db), digest(wal)) == before


def test_links_of_either_kind_are_never_written_through(tmp_path):
    victim = tmp_path / "victim.db"
    victim.write_bytes(b"")
    study_dir = tmp_path / "logs" / "fast"
    study_dir.mkdir(parents=True)
    (study_dir / "study.db").symlink_to(victim)
    fast_study(tmp_path, trials=1)
    result = run_cli("run", "fast.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "symbolic link" in result.stderr, result.stderr
    assert victim.read_bytes() == b""
    (study_dir / "study.db").unlink()
    assert run_cli("run", "fast.yaml", cwd=tmp_path).returncode == 0
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (study_dir / "recipe.yaml").unlink()
    os.link(precious, study_dir / "recipe.yaml")  # a hard link: O_NOFOLLOW does not see it
    assert run_cli("run", "fast.yaml", "study.trials=2", cwd=tmp_path).returncode == 0
    assert precious.read_text() == "keep me"


def test_a_database_sqlite_cannot_open_on_a_full_disk_is_not_called_damaged(tmp_path):
    fast_study(tmp_path, trials=3)
    assert run_cli("run", "fast.yaml", cwd=tmp_path).returncode == 0
    size = (tmp_path / "logs" / "fast" / "study.db").stat().st_size
    out = private_mounts(
        f"""
        cd {tmp_path}
        mkdir -p tight
        mount -t tmpfs -o size={size + 4096} tmpfs tight
        cp logs/fast/study.db tight/ 2>/dev/null || true
        mkdir -p tight2 && mount -t tmpfs -o size={size + 8192} tmpfs tight2
        mkdir tight2/fast && cp logs/fast/study.db tight2/fast/
        set +e
        {sys.executable} -m torchtune_hp trials tight2/fast 2> err.txt; echo $? > rc.txt
        """
    )
    assert out.returncode == 0, out.stderr
    err = (tmp_path / "err.txt").read_text()
    if (tmp_path / "rc.txt").read_text().strip() == "0":
        pytest.skip("SQLite found room on this file system")
    assert "damaged" not in err and "disk" in err, err


def test_the_trials_table_on_a_terminal_shows_brackets_as_written(tmp_path):
    (tmp_path / "fast.py").write_text(
        "def train(trial):\n    raise RuntimeError('[rank0]: boom at [/tmp/x]')\n"
    )
    write(
        tmp_path / "fast.yaml",
        {
            "study": {"name": "fast", "trials": 1},
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "objective": {"function": "fast.py:train"},
            "logdir": "logs",
        },
    )
    run_cli("run", "fast.yaml", cwd=tmp_path)
    rc, shown = on_terminal("trials", "logs/fast", cwd=tmp_path, columns=200)
    assert rc == 0, shown
    assert "[rank0]: boom" in shown.replace("\r\n", "\n").replace("│", " ").replace("\n", " ")


def test_the_trials_table_on_a_narrow_terminal_never_cuts_a_number(tmp_path):
    """A helper at 80 columns read weight_decay 9.50423e-05 as ``9.50…`` and lr as ``0.00…``
    (every cell was squeezed), and a long note wrapped each trial over some thirty lines.
    Numbers are kept whole: the note is cut to one line where the rest fits, and the plain
    table (whole lines) is printed where it does not."""
    space = {
        "learning_rate": Float(1e-5, 1e-1, log=True),
        "weight_decay": Float(1e-7, 1e-2, log=True),
        "dropout": Float(0.0, 0.5),
    }
    with Study("tbl", space, sampler="gp", seed=0, logdir=tmp_path, images_every=0) as study:
        study.optimize(lambda t: t.params["dropout"] + t.params["weight_decay"], n_trials=3)
        rows = [
            [f"{t.params[k]:.6g}" for k in ("learning_rate", "weight_decay")] for t in study.trials
        ]
    note = "initial design (Sobol): the GP starts once"
    for columns, table in ((80, "plain"), (110, "rich"), (200, "rich")):
        rc, shown = on_terminal("trials", "tbl", cwd=tmp_path, columns=columns)
        assert rc == 0, shown
        shown = re.sub(r"\x1b\[[0-9;]*m", "", shown)  # the colours: what is left is seen
        lines = [line for line in shown.splitlines() if "COMPLETE" in line]
        assert len(lines) == 3, shown  # one line per trial
        for line, numbers in zip(lines, rows, strict=True):
            assert all(n in line for n in numbers), (columns, line)
        assert ("│" in lines[0]) == (table == "rich"), shown
        if table == "rich":
            assert all(len(line) <= columns for line in shown.splitlines()), shown
            assert (note + " 5 trials have values, 0 so far" in lines[0]) == (columns == 200)
        else:
            assert note in lines[0]  # whole, where the terminal wraps it


def test_a_long_study_on_a_terminal_still_has_one_line_per_trial(tmp_path):
    """Above 200 trials the table is plain columns (rich takes seconds there), and they were
    printed whole: a 100-column terminal wrapped each failed trial's 140-character error over
    two lines. Cut to the terminal as the rich table is, numbers whole."""
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    error = "RuntimeError: a rather long error message " + "that does not fit " * 6
    with Study("long", space, sampler="sobol", seed=0, logdir=tmp_path, images_every=0) as st:
        for i in range(205):
            t = st.ask()
            if i % 2:
                st.tell(t, t.params["x"] + t.params["y"])
            else:
                st.tell(t, state="failed", error=error)
        xs = [f"{t.params['x']:.6g}" for t in st.trials]
    rc, shown = on_terminal("trials", "long", cwd=tmp_path, columns=100)
    assert rc == 0, shown
    lines = [line for line in shown.splitlines() if "COMPLETE" in line or "FAILED" in line]
    assert len(lines) == 205 and "│" not in lines[0]  # the plain columns, one line a trial
    assert all(len(line) <= 100 for line in shown.splitlines()), shown
    assert all(x in line for x, line in zip(xs, lines, strict=True))
    assert lines[0].endswith("…") and "RuntimeError: a rather long" in lines[0]


def test_closing_the_terminal_is_a_clean_stop(tmp_path):
    """SIGHUP from a real closed terminal: 129, trials recorded, nothing orphaned, even though
    nothing can be written to the terminal any more."""
    import pty

    study_dir = two_long_trials_recipe(tmp_path)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the terminal's slave side
        os.chdir(tmp_path)
        os.execv(sys.executable, cli_cmd("run", "recipe.yaml"))
    try:
        deadline = time.monotonic() + 60
        while len(seen_pids(study_dir)) < 2:
            assert time.monotonic() < deadline, "two trials did not start"
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    os.read(fd, 65536)  # keep the terminal drained
                except OSError:
                    break
        pids = seen_pids(study_dir)
    finally:
        os.close(fd)  # the window closes: the kernel sends SIGHUP
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 129
    assert not [p for p in pids if pid_alive(p)]
    trials = read_trials(study_dir)
    assert trials and all(t.interruption is Interruption.STOPPED for t in trials)


def test_a_deleted_database_s_write_ahead_log_is_set_aside_too(tmp_path):
    fast_study(tmp_path, trials=200, sleep=0.05)
    study_dir = tmp_path / "logs" / "fast"
    proc = subprocess.Popen(cli_cmd("run", "fast.yaml"), cwd=tmp_path, stderr=subprocess.PIPE)
    wait_for(lambda: count(study_dir, "COMPLETE") >= 5, what="some trials")
    proc.kill()  # study.db-wal stays, holding those trials
    proc.wait()
    assert (study_dir / "study.db-wal").exists()
    (study_dir / "study.db").unlink()  # the user deletes the database only
    result = run_cli("run", "fast.yaml", "study.trials=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = read_trials(study_dir)
    assert [t.number for t in trials] == [0, 1, 2]  # a new study, nothing replayed into it
    (aside,) = (tmp_path / "logs").glob("fast.replaced-*")
    assert (aside / "study.db-wal").exists()


SWALLOWS = """
import time

def train(trial):
    try:
        time.sleep(30)  # "train" until done or stopped
    except KeyboardInterrupt:  # a common early-stop loop: keep what there is
        pass
    open("stopped_once", "a").close()
    return trial.params["x"]
"""


def test_a_stop_the_objective_swallows_still_stops_the_study(tmp_path):
    function_recipe(tmp_path, SWALLOWS, "sw", trials=5)
    proc = subprocess.Popen(cli_cmd("run", "r.yaml"), cwd=tmp_path, stderr=subprocess.PIPE)
    study_dir = tmp_path / "logs" / "sw"
    wait_for(lambda: count(study_dir, "RUNNING") == 1, what="a trial")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    (trial,) = read_trials(study_dir)  # what it returned is kept; nothing more ran
    assert trial.state is TrialState.COMPLETE


def test_nohup_keeps_sighup_ignored(tmp_path):
    fast_study(tmp_path, trials=4, sleep=0.5)
    study_dir = tmp_path / "logs" / "fast"
    proc = subprocess.Popen(
        ["nohup", *cli_cmd("run", "fast.yaml")],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: count(study_dir, "COMPLETE") >= 1, what="a trial")
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 0
    assert count(study_dir, "COMPLETE") == 4


@pytest.mark.parametrize("folder", ["h#1", "w?x", "q%41"])
def test_a_logdir_with_uri_characters_resumes(tmp_path, folder):
    fast_study(tmp_path, trials=2)
    logdir = tmp_path / folder
    assert run_cli("run", "fast.yaml", f"logdir={logdir}", cwd=tmp_path).returncode == 0
    again = run_cli("run", "fast.yaml", f"logdir={logdir}", "study.trials=3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    shown = run_cli("trials", str(logdir / "fast"), "--format", "json")
    assert shown.returncode == 0 and len(json.loads(shown.stdout)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fast.py", "fast.yaml", folder])


def test_a_reader_that_stops_reading_does_not_stop_the_study(tmp_path):
    """``torchtune-hp run ... 2>&1 | head -2``: the pipe breaks, the study goes on."""
    (tmp_path / "fast.py").write_text(
        "import warnings\n\ndef train(trial):\n    warnings.warn('noisy')\n"
        "    if trial.number == 1:\n        raise ValueError('a failure warns too')\n"
        "    return trial.params['x']\n"
    )
    write(
        tmp_path / "r.yaml",
        {
            "study": {"name": "pipe", "trials": 8, "seed": 0},
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "objective": {"function": "fast.py:train"},
            "logdir": "logs",
        },
    )
    cmd = " ".join(cli_cmd("run", "r.yaml"))
    pipeline = f"{cmd} 2>&1 | head -2 > /dev/null; echo ${{PIPESTATUS[0]}}"
    out = subprocess.run(
        ["bash", "-c", pipeline],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "0", out
    trials = read_trials(tmp_path / "logs" / "pipe")
    assert len(trials) == 8 and trials[1].state is TrialState.FAILED
    assert sum(t.state is TrialState.COMPLETE for t in trials) == 7


def test_a_trial_that_reports_on_every_line_is_forwarded_in_linear_time_and_a_stop_is_prompt(
    tmp_path,
):
    """A ``metric_regex`` that matches every line of a fast script: each report re-read the
    trial's whole row (all its reports), so n reports cost O(n^2) (8000 lines: 30 s), and
    the driver forwarded the whole backlog before it looked at a stop signal (SIGTERM
    answered after 90 s). Worse, a stop cut the backlog short and the trial was then
    recorded COMPLETE at whatever report had been forwarded last. Now a stop is answered
    at once and such a trial is interrupted (it runs again), never COMPLETE at a truncated
    value; and a run left alone records every report."""
    lines = 30_000
    (tmp_path / "many.py").write_text(
        f"for i in range({lines}):\n    print(f'epoch {{i}} loss {{1.0 / (i + 1):.8f}}')\n"
    )
    objective = {"command": ["python", "many.py"], "metric_regex": r"loss (?P<value>[0-9.]+)"}
    write(
        tmp_path / "recipe.yaml",
        {
            "study": {"name": "many", "metric": "loss", "trials": 1, "seed": 0},
            "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "sampler": {"name": "random"},
            "objective": objective,
            "tensorboard": {"enabled": False},
            "logdir": "logs",
        },
    )
    study_dir = tmp_path / "logs" / "many"
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    log = study_dir / "trial_0000" / "stdout.log"
    last = f"epoch {lines - 1} loss"
    wait_for(lambda: log.exists() and last in log.read_text(), what="the script's last line")
    driver.send_signal(signal.SIGTERM)
    start = time.monotonic()
    _, err = driver.communicate(timeout=120)
    waited = time.monotonic() - start
    assert driver.returncode == 128 + signal.SIGTERM, err
    assert waited < 15, waited  # 90 s and more before
    (trial,) = read_trials(study_dir)
    if trial.state is TrialState.COMPLETE:  # the driver was done forwarding first: all of it
        assert len(trial.intermediate) == lines
        assert trial.value == pytest.approx(1.0 / lines, rel=1e-3)
    else:
        assert (trial.state, trial.interruption) == (TrialState.FAILED, Interruption.STOPPED)
    again = run_cli("run", "recipe.yaml", "study.name=alone", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    (whole,) = read_trials(tmp_path / "logs" / "alone")
    assert whole.state is TrialState.COMPLETE and len(whole.intermediate) == lines
    assert whole.value == pytest.approx(1.0 / lines, rel=1e-3)
