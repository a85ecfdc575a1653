import gc
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import run_cli

from torchtune_hp import (
    Categorical,
    Float,
    Int,
    Study,
    StudyMismatch,
    TrialPruned,
    TrialState,
    load_study,
)
from torchtune_hp.storage import SCHEMA_VERSION, Storage, StorageError
from torchtune_hp.trial import Interruption, Origin

SPACE = {"x": Float(0.0, 1.0), "opt": Categorical(["sgd", "adam"])}


def test_ask_tell_and_best():
    study = Study("s", SPACE, seed=0, logdir=None)
    values = []
    for i in range(5):
        t = study.ask()
        assert t.number == i and isinstance(t.params, dict) and set(t.params) == {"x", "opt"}
        values.append(abs(t.params["x"] - 0.4))
        study.tell(t, torch.tensor(values[-1]))  # 0-d tensors are accepted
    assert study.best_value == pytest.approx(min(values))
    assert study.best_params == study.trials[values.index(min(values))].params
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    # what cannot be a value says so of tell(), not of an objective ask/tell code has none of
    told = [study.tell(study.ask(), v) for v in ("0.2", float("nan"), {"acc": 1.0})]
    assert [t.error for t in told] == [
        "the value given to tell() is not a number: a str ('0.2')",
        "the value given to tell() was nan (the run diverged)",
        "the value given to tell() has keys ['acc'], not the metric 'value'",
    ]


def test_mode_max_picks_highest():
    study = Study("s", SPACE, logdir=None, mode="max")
    for v in (1.0, 3.0, 2.0):
        study.tell(study.ask(), v)
    assert study.best_value == 3.0 and study.best_trial.number == 1


def test_failures_are_recorded_and_the_study_goes_on():
    study = Study("s", SPACE, seed=0, logdir=None)
    outcomes = iter([ValueError("boom"), math.nan, math.inf, 0.5, "text", TrialPruned()])

    def objective(trial):
        trial.report(0.9, step=0)
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    with pytest.warns(UserWarning, match="trial 0 failed: ValueError: boom"):
        study.optimize(objective, n_trials=6)
    t = study.trials
    assert [x.state for x in t] == [
        TrialState.FAILED,
        TrialState.FAILED,
        TrialState.FAILED,
        TrialState.COMPLETE,
        TrialState.FAILED,
        TrialState.PRUNED,
    ]
    assert "Traceback" in t[0].error and "ValueError: boom" in t[0].error
    assert t[1].error == "the objective returned nan" and t[1].value is None
    assert t[2].error == "the objective returned inf"
    assert "must return a number, got a str ('text')" in t[4].error
    assert t[5].value == 0.9 and t[5].intermediate == {0: 0.9}  # pruned keeps its last report
    assert study.best_value == 0.5


def test_objective_may_return_a_dict_with_the_metric():
    study = Study("s", SPACE, logdir=None, metric="val_loss")
    study.optimize(lambda t: {"val_loss": 0.25, "acc": 0.9}, n_trials=1)
    study.optimize(lambda t: {"acc": 0.9}, n_trials=2)
    assert study.trials[0].value == 0.25
    assert "not the metric 'val_loss'" in study.trials[1].error


def test_enqueue_comes_first_and_add_records_outside_results():
    study = Study("s", SPACE, seed=0, logdir=None)
    study.enqueue({"x": 0.123, "opt": "adam"})
    added = study.add({"x": 0.9, "opt": "sgd"}, 0.01)
    assert added.number == 0 and added.state is TrialState.COMPLETE
    t = study.ask()
    assert t.params == {"x": 0.123, "opt": "adam"} and t.number == 1
    with pytest.raises(ValueError, match="outside"):
        study.enqueue({"x": 2.0, "opt": "adam"})
    with pytest.raises(ValueError, match="'opt'='rmsprop' is not among the choices of categorical"):
        study.add({"x": 0.5, "opt": "rmsprop"}, 1.0)
    assert study.best_params == {"x": 0.9, "opt": "sgd"}


def test_a_partial_enqueue_has_the_sampler_draw_the_rest(tmp_path):
    """As Optuna's enqueue_trial: the parameters given are tried, the others drawn when the
    trial starts; it counts as a sampler draw (the Sobol design moves on), and a rerun
    script does not queue it again."""
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0), "opt": Categorical(["sgd", "adam"])}

    def script():
        study = Study("p", space, sampler="sobol", seed=0, logdir=tmp_path)
        study.enqueue({"opt": "adam"})
        study.enqueue({"opt": "adam", "x": 0.5})
        return study

    study = script()
    first, second, third = study.ask(), study.ask(), study.ask()
    assert first.params["opt"] == "adam" and set(first.params) == set(space)
    assert second.params["opt"] == "adam" and second.params["x"] == 0.5
    assert len({first.params["y"], second.params["y"], third.params["y"]}) == 3  # not repeated
    assert study.trial(0).note == "enqueued ['opt']; the sampler drew ['x', 'y']"
    for t in (first, second, third):
        study.tell(t, t.params["x"])
    study.close()
    study = script()  # run again: both are in the study already, neither is queued again
    assert study.storage.queued() == []
    with pytest.raises(ValueError, match="unknown parameters"):
        study.enqueue({"z": 1.0})
    study.close()
    # a grid used up: the partial point still runs (the rest drawn at random), and the
    # whole point behind it too (they stayed queued for ever, the study ending at once)
    grid = Study("g", SPACE, sampler="grid", sampler_options={"resolution": 2}, logdir=None)
    grid.optimize(lambda t: t.params["x"], n_trials=4)
    grid.enqueue({"opt": "adam"}, skip_if_exists=False)
    grid.enqueue({"x": 0.5, "opt": "sgd"})
    grid.optimize(lambda t: t.params["x"], n_trials=6)
    assert len(grid.trials) == 6 and grid.storage.queued() == []
    assert grid.trials[4].params["opt"] == "adam" and "drawn at random" in grid.trials[4].note
    assert grid.trials[5].params == {"x": 0.5, "opt": "sgd"}


def test_points_built_with_numpy_or_torch_numbers_are_taken_as_python_numbers():
    space = {"x": Float(0.0, 1.0), "n": Int(1, 10), "c": Categorical([1, 2, 4])}
    study = Study("np", space, seed=0, logdir=None)
    study.add({"x": np.float32(0.5), "n": np.int64(4), "c": np.int64(2)}, 1.0)
    study.enqueue({"x": torch.tensor(0.25), "n": 4.0, "c": torch.tensor(4)})
    assert study.trials[0].params == {"x": 0.5, "n": 4, "c": 2}
    assert study.ask().params == {"x": 0.25, "n": 4, "c": 4}
    assert all(type(v) in (int, float) for v in study.trials[0].params.values())
    for bad in ({"n": 4.5}, {"x": np.array([0.1, 0.2])}, {"n": np.bool_(True)}):
        with pytest.raises(ValueError, match="is (not an integer|not a number) for"):
            study.add({"x": 0.5, "n": 4, "c": 1, **bad}, 1.0)


def test_numpy_strings_and_floats_are_the_choices_they_equal(tmp_path):
    """A helper's ``rng.choice(["sgd", "adam"])`` gives ``np.str_('adam')``, a str equal to
    'adam', and enqueue refused it as "not among the choices"; ``np.float64(0.5)`` likewise,
    and a choices list made with numpy (np.int64) was refused outright."""
    rng = np.random.default_rng(0)
    space = {
        "opt": Categorical(["sgd", "adam"]),
        "w": Categorical([0.1, 0.5]),
        "bs": Categorical(list(np.array([32, 64]))),
    }
    assert space["bs"].choices == (32, 64) and type(space["bs"].choices[0]) is int
    with Study("np", space, sampler="random", seed=0, logdir=tmp_path) as study:
        study.enqueue({"opt": rng.choice(["sgd", "adam"]), "w": np.float64(0.5), "bs": 64})
        study.add({"opt": np.str_("sgd"), "w": np.float64(0.1), "bs": np.int64(32)}, 2.0)
        study.optimize(lambda t: 1.0, n_trials=2)
    with Study("np", space, sampler="random", seed=0, logdir=tmp_path) as again:  # read back
        params = [t.params for t in again.trials]
    assert params == [{"opt": "sgd", "w": 0.1, "bs": 32}, {"opt": "adam", "w": 0.5, "bs": 64}]
    assert {type(p["opt"]) for p in params} == {str} and {type(p["w"]) for p in params} == {float}


def test_a_rerun_script_does_not_enqueue_or_add_its_warm_starts_twice(tmp_path):
    def script(n_trials):  # what a user's tuning script does, run twice: the second resumes
        study = Study("s", SPACE, sampler="sobol", seed=0, logdir=tmp_path)
        study.enqueue({"x": 0.123, "opt": "adam"})
        added = study.add({"x": 0.9, "opt": "sgd"}, 0.25)
        study.optimize(lambda t: t.params["x"], n_trials=n_trials)
        trials = study.trials
        study.close()
        return added, trials

    first, trials = script(4)
    again, rerun = script(6)
    assert again.number == first.number == 0  # the same trial, not a copy
    assert len(rerun) == 6 and rerun[:4] == trials
    assert [t.params for t in rerun].count({"x": 0.123, "opt": "adam"}) == 1
    assert [t.params for t in rerun].count({"x": 0.9, "opt": "sgd"}) == 1
    # asked for on purpose, repeats are recorded: a noisy objective measured twice
    study = Study("s", SPACE, sampler="sobol", seed=0, logdir=tmp_path)
    repeat = study.add({"x": 0.9, "opt": "sgd"}, 0.25, skip_if_exists=False)
    study.enqueue({"x": 0.123, "opt": "adam"}, skip_if_exists=False)
    assert repeat.number == 6 and study.ask().params == {"x": 0.123, "opt": "adam"}
    # another value for the same parameters is a new measurement, kept
    assert study.add({"x": 0.9, "opt": "sgd"}, 0.26).number == 8
    study.close()


def test_in_memory_study_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = Study("mem", SPACE, logdir=None)
    study.optimize(lambda t: t.params["x"], n_trials=3)
    assert list(tmp_path.iterdir()) == []


def test_storage_is_a_real_sqlite_file_with_schema_version(tmp_path):
    study = Study("s", SPACE, seed=0, logdir=tmp_path)
    study.optimize(lambda t: t.params["x"], n_trials=3)
    study.close()
    db = sqlite3.connect(tmp_path / "s" / "study.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM trials WHERE state='COMPLETE'").fetchone()[0] == 3
    assert (tmp_path / "s" / "trial_0002" / "params.yaml").read_text().startswith("x: ")


def test_n_trials_is_the_study_total_across_runs(tmp_path):
    with Study("s", SPACE, seed=0, logdir=tmp_path) as study:
        study.optimize(lambda t: t.params["x"], n_trials=4)
    with Study("s", SPACE, seed=0, logdir=tmp_path) as study:
        study.optimize(lambda t: t.params["x"], n_trials=4)
        assert len(study.trials) == 4
        study.optimize(lambda t: t.params["x"], n_trials=6)
        assert len(study.trials) == 6


def test_a_time_limit_starts_no_trial_after_it_and_lets_the_running_one_end(tmp_path):
    """optimize(timeout=) as Optuna's: no trial starts once it passed, the running trial
    ends COMPLETE (its compute is kept), a warning says how many the study holds, and the
    limit counts from each call, so calling again goes on."""
    import datetime
    import warnings

    from torchtune_hp import TimeLimitReached

    def slow(trial):
        time.sleep(0.4)
        return trial.params["x"]

    with Study("s", SPACE, seed=0, logdir=tmp_path, tensorboard=False) as study:
        start = time.monotonic()
        with pytest.warns(TimeLimitReached) as said:
            study.optimize(slow, n_trials=50, timeout="2s")
        took = time.monotonic() - start
        n = len(study.trials)
        assert 2 <= n <= 6 and took < 6, (n, took)  # 0.4 s trials; a slow machine: fewer
        assert all(t.state is TrialState.COMPLETE for t in study.trials)
        message = str(said[0].message)
        assert f"time limit (2s) passed with {n} of 50 trials finished" in message, message
        with pytest.warns(TimeLimitReached):
            study.optimize(slow, n_trials=50, timeout=datetime.timedelta(seconds=0.5))
        assert n + 1 <= len(study.trials) <= n + 3
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a limit that does not bind says nothing
            study.optimize(slow, n_trials=len(study.trials) + 1, timeout="1h")
    for bad in ("8 hours", 0, -5, True):
        with pytest.raises(ValueError, match="^timeout: .*a duration such as 90s, 30m, 8h"):
            study.optimize(slow, n_trials=99, timeout=bad)
    with pytest.raises(ValueError, match=r"got '90' \(a number in a string: 90 or '90s'"):
        study.optimize(slow, n_trials=99, timeout="90")


def test_reopening_a_study_with_another_seed_says_so(tmp_path):
    with Study("s", SPACE, seed=0, logdir=tmp_path) as study:
        study.optimize(lambda t: t.params["x"], n_trials=2)
    with Study("s", SPACE, logdir=tmp_path) as study:  # no seed: the stored one, silently
        assert study.seed == 0
    with pytest.warns(
        RuntimeWarning,
        match="had seed 0 until now: its next trials draw from seed 7, its 2 trials so far stay",
    ):
        with Study("s", SPACE, seed=7, logdir=tmp_path) as study:
            assert study.seed == 7


DIE_WHILE_RUNNING = """
import os, signal, sys
from torchtune_hp import Categorical, Float, Study
study = Study("s", {"x": Float(0.0, 1.0), "opt": Categorical(["sgd", "adam"])}, seed=0,
              logdir=sys.argv[1])
trial = study.ask()
print(repr(trial.params), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the driver dies with this trial RUNNING
"""


def _die_while_running(tmp_path):
    script = tmp_path / "die.py"
    script.write_text(DIE_WHILE_RUNNING)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == -9, out.stderr
    return eval(out.stdout)  # the params it printed


def test_a_trial_left_running_is_failed_and_retried_once(tmp_path):
    lost = _die_while_running(tmp_path)  # a real driver, killed with -9 mid-trial
    with pytest.warns(UserWarning, match=r"trial\(s\) \[0\] were left RUNNING"):
        resumed = Study("s", SPACE, seed=0, logdir=tmp_path)
    t0 = resumed.trials[0]
    assert t0.state is TrialState.FAILED and t0.interrupted and "died" in t0.error
    resumed.close()
    retry_params = _die_while_running(tmp_path)  # dies again, during the retry
    assert retry_params == lost
    with pytest.warns(UserWarning):
        again = Study("s", SPACE, seed=0, logdir=tmp_path)
    assert again.ask().params != lost  # tried again once, not forever
    assert again.n_finished == 0  # interrupted trials do not use up n_trials
    again.close()


def test_keyboard_interrupt_marks_the_trial_and_reraises(tmp_path):
    study = Study("s", SPACE, seed=0, logdir=tmp_path)

    def objective(trial):
        if trial.number == 2:
            raise KeyboardInterrupt
        return 1.0

    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=5)
    t = study.trials[2]
    assert t.state is TrialState.FAILED and t.interrupted and "interrupted by the user" in t.error
    study.close()
    with Study("s", SPACE, seed=0, logdir=tmp_path) as resumed:
        resumed.optimize(lambda t: 1.0, n_trials=5)
        assert resumed.n_finished == 5
        assert resumed.trials[3].params == t.params  # the interrupted params ran again first


def test_reopening_with_another_space_or_metric_says_what_differs(tmp_path):
    with Study("s", SPACE, logdir=tmp_path) as study:
        study.enqueue({"x": 0.1, "opt": "sgd"})
        study.optimize(lambda t: t.params["x"], n_trials=1)
    other = {"x": Float(0.5, 2.0), "opt": Categorical(["sgd", "adam"]), "n": Int(1, 3)}
    with pytest.raises(StudyMismatch) as e:
        Study("s", other, logdir=tmp_path)
    msg = str(e.value)
    assert "'x' changed" in msg and "low=0.5" in msg and "'n' was added" in msg
    assert "(1 of the 1 trials so far lie outside it, such as 0.1)" in msg
    with pytest.raises(StudyMismatch, match="metric changed: stored 'value', given 'acc'"):
        Study("s", SPACE, logdir=tmp_path, metric="acc")
    with pytest.raises(StudyMismatch, match="mode changed"):
        Study("s", SPACE, logdir=tmp_path, mode="max")


def test_a_widened_range_or_an_added_choice_keeps_the_trials_and_goes_on(tmp_path):
    """Overnight, the best lr sits at the edge of its range: the user widens it and runs
    again. Every change that kept the earlier trials' values inside (a range widened, a
    choice added, an Int's high raised) was refused, and the only way on was to set every
    finished trial aside. Such a change is taken, with a warning naming it; the trials so
    far stay and the sampler draws in the new space. One that leaves trials outside, or
    adds or removes a parameter, is still refused."""
    space = {"lr": Float(1e-3, 1e-1, log=True), "opt": Categorical(["sgd", "adam"]), "n": Int(1, 4)}
    with Study("w", space, sampler="gp", seed=0, logdir=tmp_path, tensorboard=False) as study:
        study.optimize(lambda t: math.log10(t.params["lr"]) + t.params["n"], n_trials=6)
        before = study.trials
    wider = {
        "lr": Float(1e-6, 1e-1, log=True),
        "opt": Categorical(["sgd", "adam", "rmsprop"]),
        "n": Int(1, 8),
    }
    with pytest.warns(UserWarning, match="goes on in a changed space that holds every trial") as w:
        study = Study("w", wider, sampler="gp", seed=0, logdir=tmp_path, tensorboard=False)
    said = str(w[0].message)
    assert "'lr' changed" in said and "'opt' changed" in said and "'n' changed" in said
    with study:
        assert study.trials == before
        study.optimize(lambda t: math.log10(t.params["lr"]) + t.params["n"], n_trials=14)
        new = study.trials[6:]
    assert min(t.params["lr"] for t in new) < 1e-3  # the GP searched the widened range
    reopened = Study("w", wider, logdir=tmp_path, tensorboard=False)  # now the stored space
    reopened.close()
    with pytest.raises(StudyMismatch, match=r"'lr' changed.*lie outside it"):
        Study("w", {**wider, "lr": Float(1e-2, 1e-1, log=True)}, logdir=tmp_path)
    with pytest.raises(StudyMismatch, match="'wd' was added") as e:
        Study("w", {**wider, "wd": Float(0.0, 0.1)}, logdir=tmp_path)
    assert e.value.keys == ["space.wd"] and "renamed" not in str(e.value)
    renamed = {"rate" if k == "lr" else k: v for k, v in wider.items()}
    with pytest.raises(StudyMismatch, match="'rate' was added .*renamed from 'lr'?") as e:
        Study("w", renamed, logdir=tmp_path)
    assert sorted(e.value.keys) == ["space.lr", "space.rate"]


OPEN_IN_ANOTHER_PROCESS = """
import sys
from torchtune_hp import Categorical, Float, Study
study = Study("s", {"x": Float(0.0, 1.0), "opt": Categorical(["sgd", "adam"])}, logdir=sys.argv[1])
print(len(study.trials))
"""


def open_elsewhere(tmp_path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", OPEN_IN_ANOTHER_PROCESS, str(tmp_path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_second_driver_is_kept_out(tmp_path):
    with Study("s", SPACE, logdir=tmp_path):
        other = open_elsewhere(tmp_path)
        assert other.returncode == 1 and "being run by another process" in other.stderr


READ_IN_ANOTHER_PROCESS = """
import sys
import torchtune_hp as hp
record = hp.load_study(sys.argv[1])
df = record.trials_dataframe()
print(record.name, record.mode, len(record.trials), record.n_finished, record.best_trial.number)
print(record.best_value, sorted(record.best_params), list(record.space.params), list(df["number"]))
"""


def test_load_study_reads_a_study_its_driver_is_running_from_another_process(tmp_path):
    """Optuna's load_study: an analysis script read a running study only through the CLI;
    ``Study(...)`` needs the space and is refused while a driver runs it."""
    with Study("s", SPACE, seed=0, logdir=tmp_path, mode="max") as study:
        study.optimize(lambda t: t.params["x"], n_trials=3)
        running = study.ask()  # RUNNING: read as it is, not recorded by the reader
        cmd = [sys.executable, "-c", READ_IN_ANOTHER_PROCESS, str(tmp_path / "s")]
        read = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert read.returncode == 0, read.stderr
        best = study.best_trial
        first, second = read.stdout.splitlines()
        assert first.split() == ["s", "max", "4", "3", str(best.number)]
        assert second == f"{best.value} ['opt', 'x'] ['x', 'opt'] [0, 1, 2, 3]"
        study.tell(running, 0.0)
    assert load_study(tmp_path / "s").trials[3].state is TrialState.COMPLETE
    assert load_study(tmp_path / "s" / "study.db").n_finished == 4  # the file, as Optuna's
    for command in ("trials", "best"):  # the CLI takes what load_study takes
        result = run_cli(command, "s/study.db", "--format", "json", cwd=tmp_path)
        assert result.returncode == 0 and f'"value": {best.value}' in result.stdout, result.stderr
    with pytest.raises(FileNotFoundError, match=r"the studies in this folder: \['s'\]"):
        load_study(tmp_path)  # the logdir, not the study


def test_the_same_process_opening_a_study_again_takes_it_over_unless_its_loop_runs(tmp_path):
    """A notebook cell run again builds ``Study(...)`` while the previous object still holds the
    folder: the idle one is closed and the new one drives (it used to be refused until the
    kernel restarted); a study whose trial loop runs is never taken over."""
    first = Study("s", SPACE, seed=0, logdir=tmp_path)
    first.optimize(lambda t: t.params["x"], n_trials=2)
    second = Study("s", SPACE, logdir=tmp_path)  # the cell, run again
    assert len(second.trials) == 2
    with pytest.raises(StorageError, match="this study is closed"):
        first.ask()
    refused = []

    def objective(trial):
        try:
            Study("s", SPACE, logdir=tmp_path)
        except StorageError as e:
            refused.append(str(e))
        return trial.params["x"]

    second.optimize(objective, n_trials=3)
    assert len(refused) == 1 and "this process is running the study already" in refused[0]
    assert [t.state for t in second.trials] == [TrialState.COMPLETE] * 3
    third = Study("s", SPACE, logdir=tmp_path)
    del first, second, third  # freed without close(): the folder is free for another process
    gc.collect()
    other = open_elsewhere(tmp_path)
    assert other.returncode == 0 and other.stdout.split() == ["3"]


def test_a_study_reopened_with_another_sampler_or_pruner_says_so(tmp_path):
    """``Study(name, space)`` reopening a gp study took random search without a word (a
    changed seed was said); the names are stored and a change is said, once."""
    with Study("s", SPACE, sampler="sobol", pruner="median", seed=0, logdir=tmp_path) as study:
        study.optimize(lambda t: t.params["x"], n_trials=2)
    said = r"goes on with sampler 'random' \(its last run: 'sobol'"
    with pytest.warns(UserWarning, match=said) as w:
        Study("s", SPACE, seed=0, logdir=tmp_path).close()
    assert "pruner 'none' (its last run: 'median')" in str(w[0].message)
    with pytest.warns(UserWarning, match=said):  # an open that ran nothing changed nothing
        reopened = Study("s", SPACE, seed=0, logdir=tmp_path)
    with reopened:
        reopened.optimize(lambda t: t.params["x"], n_trials=3)  # random search, no pruner
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Study("s", SPACE, seed=0, logdir=tmp_path).close()  # the same as last time: no word
    assert (load_study(tmp_path / "s").sampler, load_study(tmp_path / "s").pruner) == (
        "random",
        "none",
    )


def test_an_open_that_records_no_trial_stores_no_change(tmp_path):
    """A run of a finished study with a widened space, or a ``Study(...)`` opened only to
    read, stored its space all the same: each later open 'changed' it again. It is stored
    with the first trial, queued or added point of the open; the sampler's and pruner's
    names with the first trial it asks for (queueing points from a notebook's
    ``Study(name, space)``, random search, does not rename a gp study's sampler)."""
    with Study("s", SPACE, sampler="gp", seed=0, logdir=tmp_path) as study:
        study.optimize(lambda t: t.params["x"], n_trials=2)
    wider = {**SPACE, "opt": Categorical(["sgd", "adam", "rmsprop"])}
    with pytest.warns(UserWarning, match="changed space"), pytest.warns(RuntimeWarning):
        Study("s", wider, sampler="random", seed=5, logdir=tmp_path).close()
    stored = load_study(tmp_path / "s")
    assert stored.space.params["opt"].choices == ("sgd", "adam")
    assert stored.seed == 0  # nor the seed (DDP ranks > 0 take the seed their script gives)
    with pytest.warns(UserWarning, match="changed space"), pytest.warns(RuntimeWarning):
        study = Study("s", wider, sampler="random", seed=5, logdir=tmp_path)
    with study:
        # said again above (nothing was stored); a point of the widened space is stored with it
        study.enqueue({"opt": "rmsprop"})  # a point of the widened space: stored with it
    stored = load_study(tmp_path / "s")
    assert stored.space.params["opt"].choices == ("sgd", "adam", "rmsprop") and stored.seed == 5
    assert stored.sampler == "gp"  # queued from a Study(...) of random search: not renamed


def test_a_trial_of_another_study_object_is_refused_and_changes_nothing(tmp_path):
    """``b.tell(a_trial, v)`` finished b's trial of the same number with a's value; a trial
    asked before a notebook cell reopened the study was dropped without a word."""
    a = Study("a", SPACE, seed=0, logdir=None)
    b = Study("b", SPACE, seed=1, logdir=None)
    ta, tb = a.ask(), b.ask()
    for call in (lambda: b.tell(ta, 0.1), lambda: b.report(ta, 0.1), lambda: b.should_prune(ta)):
        with pytest.raises(
            ValueError, match="trial 0 was asked from study 'a', not from study 'b'"
        ):
            call()
    assert b.trial(0).state is TrialState.RUNNING and not b.trial(0).intermediate
    assert a.trial(0).state is TrialState.RUNNING
    b.tell(tb, 0.5)
    with pytest.raises(ValueError, match=r"no trial 3 \(its trials are numbered 0 to 0;"):
        b.tell(3, 1.0)
    with pytest.raises(ValueError, match=r"no trial 0 \(it has no trials yet;"):
        Study("c", SPACE, logdir=None).tell(0, 1.0)
    first = Study("nb", SPACE, seed=0, logdir=tmp_path, tensorboard=False)
    asked = first.ask()
    again = Study("nb", SPACE, seed=0, logdir=tmp_path, tensorboard=False)  # the cell rerun
    with pytest.raises(ValueError, match="another Study object of study 'nb'"):
        again.tell(asked, 0.42)
    assert again.trial(0).state is TrialState.FAILED and again.trial(0).value is None
    again.close()


def test_unseeded_study_stores_its_seed_and_continues(tmp_path):
    with Study("s", SPACE, sampler="sobol", logdir=tmp_path) as a:
        a.optimize(lambda t: 1.0, n_trials=3)
        first = [t.params for t in a.trials]
        seed = a.seed
    with Study("s", SPACE, sampler="sobol", logdir=tmp_path) as b:
        assert b.seed == seed
        b.optimize(lambda t: 1.0, n_trials=6)
        assert [t.params for t in b.trials[:3]] == first
        assert len({str(t.params) for t in b.trials}) == 6


@pytest.mark.parametrize(
    "bad",
    [{"sampler": "bogus"}, {"mode": "max"}, {"pruner": "asha", "pruner_options": {"eta": 1}}],
    ids=["sampler", "mode", "pruner option"],
)
def test_a_refused_study_leaves_the_open_one_on_the_same_folder_working(tmp_path, bad):
    """A notebook: a second ``Study(...)`` on the same folder that is then refused (a
    misspelt sampler, another mode) had already taken the folder over, closing the working
    one, which then failed with a false 'study.db-wal was deleted' error. It is refused
    before it takes anything."""
    study = Study("nb", SPACE, sampler="random", seed=0, logdir=tmp_path, tensorboard=False)
    study.optimize(lambda t: t.params["x"], n_trials=2)
    with pytest.raises((ValueError, StudyMismatch)):
        Study("nb", SPACE, logdir=tmp_path, tensorboard=False, **bad)
    study.optimize(lambda t: t.params["x"], n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    study.close()


def test_a_study_written_by_the_previous_version_is_read_and_upgraded(tmp_path):
    with Study("old", SPACE, seed=0, logdir=tmp_path) as study:
        study.optimize(lambda t: t.params["x"], n_trials=3)
    db = sqlite3.connect(tmp_path / "old" / "study.db")  # back to schema 1, as 0.1 wrote it
    db.execute("UPDATE trials SET interrupted = 1, state = 'FAILED', value = NULL WHERE number = 2")
    for column in ("interruption", "process", "paused_s", "seen"):
        db.execute(f"ALTER TABLE trials DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    reader = Storage(tmp_path / "old" / "study.db", read_only=True)  # `trials` before upgrading
    old = reader.trials()
    reader.close()
    assert [t.state for t in old] == [TrialState.COMPLETE] * 2 + [TrialState.FAILED]
    assert old[2].interruption is Interruption.DIED and not old[2].counts
    with Study("old", SPACE, seed=0, logdir=tmp_path) as study:  # a run upgrades it
        assert study.trials == old
        study.optimize(lambda t: t.params["x"], n_trials=4)
        assert study.n_finished == 4
    check = sqlite3.connect(tmp_path / "old" / "study.db")
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_study_written_by_version_2_is_read_and_upgraded(tmp_path):
    with Study("v2", SPACE, seed=0, logdir=tmp_path) as study:
        study.optimize(lambda t: t.params["x"], n_trials=2)
        before = study.trials
    storage = Storage(tmp_path / "v2" / "study.db")  # and a trial its dead driver left
    storage.create_trial({"x": 0.5}, Origin.SAMPLER)
    storage.close()
    db = sqlite3.connect(tmp_path / "v2" / "study.db")  # as 0.2 wrote it: no paused_s, seen
    db.execute("ALTER TABLE trials DROP COLUMN paused_s")
    db.execute("ALTER TABLE trials DROP COLUMN seen")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    reader = Storage(tmp_path / "v2" / "study.db", read_only=True)
    assert reader.trials()[:2] == before  # paused_s reads as 0: the durations as they were
    reader.close()
    time.sleep(0.5)
    with (
        pytest.warns(UserWarning, match="died"),
        Study("v2", SPACE, seed=0, logdir=tmp_path) as study,
    ):
        left = study.trial(2)  # its last sign of life unknown: it ends when found, as it did
        assert left.interruption is Interruption.DIED and left.duration_s >= 0.5
        study.optimize(lambda t: t.params["x"], n_trials=3)
        assert study.trials[:2] == before and study.n_finished == 3
    check = sqlite3.connect(tmp_path / "v2" / "study.db")
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = [row[1] for row in check.execute("PRAGMA table_info(trials)")]
    assert columns[-2:] == ["paused_s", "seen"]


def test_a_trial_left_by_a_dead_driver_ends_at_its_last_sign_of_life(tmp_path):
    """Found by the next driver a while later, it ends at its last report (or its start when it
    reported nothing), not when it was found: its seconds are the ones it ran."""
    with Study("dead", SPACE, seed=0, logdir=tmp_path, tensorboard=False):
        pass
    storage = Storage(tmp_path / "dead" / "study.db")  # as a driver that then dies
    reported = storage.create_trial({"x": 0.5}, Origin.SAMPLER)
    time.sleep(0.3)
    storage.report(reported, 0, 1.0)
    storage.create_trial({"x": 0.25}, Origin.SAMPLER)  # dies before its first report
    storage.close()
    shown = run_cli("trials", str(tmp_path / "dead"))  # a reader is told what they are
    assert "no driver runs this study now" in shown.stderr and "[0, 1]" in shown.stderr
    time.sleep(1.5)  # nobody notices for a while
    with pytest.warns(UserWarning, match="died"):
        study = Study("dead", SPACE, seed=0, logdir=tmp_path, tensorboard=False)
    first, second = study.trials
    assert first.interruption is Interruption.DIED and second.interruption is Interruption.DIED
    assert 0.3 <= first.duration_s < 1.0
    assert second.duration_s < 0.5
    study.close()


def test_api_misuse_gets_a_message_not_a_raw_error():
    study = Study("s", SPACE, seed=0, logdir=None)
    with pytest.raises(ValueError, match="has no trial 999"):
        study.tell(999, 0.1)
    for bad in (None, 2.5, -1, True):
        with pytest.raises((TypeError, ValueError), match="n_trials must be an integer >= 0"):
            study.optimize(lambda t: 0.0, n_trials=bad)
    assert study.trials == []
    study.optimize(lambda t: 0.0, n_trials=np.int64(2))  # numpy's integers are integers
    assert len(study.trials) == 2
    trial = study.ask()  # a trial's number as numpy gives it back (a pandas frame of trials)
    study.report(np.int64(trial.number), 0.5, step=0)
    assert study.should_prune(np.int64(trial.number)) is False
    for call in (study.report, study.should_prune, study.tell):  # were KeyError, AttributeError
        for bad in (9999, "2", 2.0, None):
            args = (bad,) if call.__name__ == "should_prune" else (bad, 0.1)
            with pytest.raises(ValueError, match=rf"{call.__name__}\(\) takes a Trial from ask"):
                call(*args)
    for bad in ("bogus", 3, True, b"complete"):  # numbers and bytes were taken as COMPLETE
        with pytest.raises(ValueError, match="the state is one of complete, pruned, failed"):
            study.tell(trial, 0.5, state=bad)
    assert study.tell(np.int64(trial.number), 0.25).value == 0.25
    assert study.trial(trial.number).intermediate == {0: 0.5}


def test_a_study_made_in_one_thread_runs_in_another(tmp_path):
    """A notebook's background thread, a web app's worker: SQLite refused the connection made
    in the main thread, and the folder then stayed 'running the study already' for good."""
    import threading

    study = Study("t", SPACE, seed=0, logdir=tmp_path)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            study.optimize(lambda t: t.params["x"], n_trials=3)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    assert not errors and study.n_finished == 3
    study.optimize(lambda t: t.params["x"], n_trials=4)  # and back in this one
    assert study.n_finished == 4
    study.close()
    with Study("t", SPACE, seed=0, logdir=tmp_path) as again:
        assert again.n_finished == 4


def test_trial_report_takes_the_next_step_by_default_and_notes_a_repeated_step():
    study = Study("s", SPACE, seed=0, logdir=None)
    trial = study.ask()
    trial.report(0.9)
    trial.report(0.8)
    trial.report(0.7, step=1)  # a stuck step counter: the value replaces, and the note says so
    frozen = study.trial(trial.number)
    assert frozen.intermediate == {0: 0.9, 1: 0.7}
    assert "a step was reported more than once" in frozen.note


def test_closing_with_an_unanswered_ask_says_so_and_runs_it_again(tmp_path, recwarn):
    study = Study("s", SPACE, seed=0, logdir=tmp_path)
    asked = study.ask()
    study.close()  # a clean close: not "the process running this trial died"
    again = Study("s", SPACE, seed=0, logdir=tmp_path)
    assert not [w for w in recwarn if "died" in str(w.message)]
    first = again.trials[0]
    assert first.interruption is Interruption.STOPPED and "closed before" in first.error
    again.optimize(lambda t: t.params["x"], n_trials=1)
    assert again.trials[1].params == asked.params and again.trials[1].state is TrialState.COMPLETE
    again.close()


def test_a_study_held_by_another_thread_is_taken_over_all_the_same(tmp_path):
    """The handover closes the idle holder; its SQLite connection belongs to the thread that
    made it and refuses to close from here, and the folder is freed anyway."""
    import threading

    made = []
    worker = threading.Thread(target=lambda: made.append(Study("s", SPACE, logdir=tmp_path)))
    worker.start()
    worker.join()
    again = Study("s", SPACE, logdir=tmp_path)
    again.optimize(lambda t: t.params["x"], n_trials=1)
    again.close()
    assert open_elsewhere(tmp_path).stdout.split() == ["1"]


def test_the_trials_table_has_one_line_per_trial_whatever_the_notes():
    """A resumed trial's note has a line per decision, a failed one's error a traceback: the
    table shows the last line of each (the whole text is in ``trials --trial N``)."""
    from torchtune_hp.display import plain_table, trial_rows
    from torchtune_hp.trial import FrozenTrial

    paused = FrozenTrial(
        0, TrialState.PRUNED, {"x": 0.5}, 1.0, note="stopped after 2 reports\nresumed after 2"
    )
    failed = FrozenTrial(1, TrialState.FAILED, {"x": 0.1}, error="Traceback...\nValueError: x")
    table = plain_table(*trial_rows([paused, failed], ["x"], "loss")).splitlines()
    assert len(table) == 3
    assert table[1].endswith("resumed after 2") and table[2].endswith("ValueError: x")


def test_an_ask_tell_follower_reads_what_rank_0_recorded_after_closing(tmp_path):
    """A DDP rank > 0 running an ask/tell script closes as soon as its own tell (which
    records nothing) returns, usually before rank 0 has told the last trial: it read that
    trial RUNNING and another best. Closing waits for rank 0's record of it."""
    follower = textwrap.dedent(
        f"""
        from torchtune_hp import Float, Study
        with Study("s", {{"x": Float(0, 1)}}, logdir={str(tmp_path)!r}) as study:
            for _ in range(2):
                trial = study.ask()
                study.tell(trial, trial.params["x"])
        print([(t.number, t.state.value) for t in study.trials], study.best_params)
        """
    )
    with Study("s", {"x": Float(0, 1)}, logdir=tmp_path, seed=0) as study:
        env = {**os.environ, "RANK": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-c", follower], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2):
            trial = study.ask()
            time.sleep(1.0)  # training, both ranks; then rank 0 saves and evaluates
            time.sleep(0.5)
            study.tell(trial, trial.params["x"])
        rank_0 = f"{[(t.number, t.state.value) for t in study.trials]} {study.best_params}"
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == rank_0


def test_a_trial_told_to_stop_by_number_is_pruned_when_told_its_value():
    study = Study("n", {"x": Float(0, 1)}, logdir=None, pruner="asha", seed=0)
    first = study.ask()
    study.report(first, 0.1, 0)
    study.tell(first, 0.1)
    second = study.ask()
    study.report(second.number, 0.9, 0)
    assert study.should_prune(second.number)  # by its number: the Trial is not told
    assert study.tell(second.number, 0.9).state is TrialState.PRUNED


def test_points_queued_before_the_space_was_narrowed_leave_the_queue_unrun(tmp_path):
    """A study reopened with a narrower space that still holds every trial was taken, but its
    queued points outside the new space ran (x=0.8 in [0, 0.5]), and from then on the stored
    space no longer held the study's trials. They leave the queue with a warning; the one that
    fits still runs first."""
    wide = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    with Study("q", wide, seed=0, logdir=tmp_path, tensorboard=False) as study:
        study.add({"x": 0.1, "y": 0.1}, 1.0)
        study.enqueue({"x": 0.8})
        study.enqueue({"x": 0.9, "y": 0.3})
        study.enqueue({"x": 0.2})
    narrow = {"x": Float(0.0, 0.5), "y": Float(0.0, 1.0)}
    with pytest.warns(UserWarning, match="changed space"):
        study = Study("q", narrow, seed=0, logdir=tmp_path, tensorboard=False)
    with study, pytest.warns(UserWarning, match="queued earlier") as caught:
        first = study.ask()
        study.tell(first, 0.5)
        second = study.ask()
        study.tell(second, 0.5)
    dropped = [str(w.message) for w in caught if "queued earlier" in str(w.message)]
    assert len(dropped) == 2 and "0.8" in dropped[0] and "0.9" in dropped[1]
    assert first.params["x"] == 0.2 and 0 <= second.params["x"] <= 0.5
    with Study("q", wide, seed=0, logdir=tmp_path, tensorboard=False) as study:
        study.enqueue({"x": 0.9})
    with Study("q", narrow, seed=0, logdir=tmp_path, tensorboard=False) as study:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said after the queue's transaction: not stuck
            with pytest.raises(UserWarning, match="queued earlier"):
                study.ask()
        assert study.storage.queued() == []
    with Study("q", narrow, seed=0, logdir=tmp_path, tensorboard=False) as again:
        assert again.storage.queued() == []
        assert all(t.params["x"] <= 0.5 for t in again.trials)


@pytest.mark.parametrize("kind", ["sampler", "pruner"])
def test_sampler_or_pruner_none_is_the_default_and_a_foreign_object_is_refused_at_open(kind):
    """``pruner=None`` (Optuna's way to say 'the default') was taken as the pruner, and every
    trial that asked should_prune() failed with an AttributeError; an Optuna pruner failed
    them with a TypeError. None is now the default; an object without our method is refused
    when the study opens, before any trial."""
    study = Study("n", SPACE, seed=0, logdir=None, **{kind: None})
    assert study.sampler.name == "random" and study.pruner.name == "none"

    class TwoArguments:  # Optuna's shape: prune(study, trial); a sampler without sample()
        def prune(self, study, trial):
            return False

    for given in (TwoArguments(), TwoArguments, 42):
        with pytest.raises(TypeError, match=f"{kind} must be a name, one of") as refused:
            Study("n", SPACE, seed=0, logdir=None, **{kind: given})
        assert "Optuna's" not in str(refused.value)
    with pytest.raises(ValueError, match=r"did you mean 'gp'\?"):
        Study("n", SPACE, seed=0, logdir=None, **{kind: "GP"})
    optuna = pytest.importorskip("optuna")  # a benchmark peer, not installed by [dev]
    theirs = optuna.pruners.MedianPruner() if kind == "pruner" else optuna.samplers.TPESampler()
    with pytest.raises(TypeError, match=f"Optuna's {kind}s are not"):
        Study("n", SPACE, seed=0, logdir=None, **{kind: theirs})


def test_what_a_tell_or_report_does_not_record_is_said(tmp_path):
    """A second tell, or a tell by number of a trial ended by a takeover, dropped its value
    without a word; a report at step 2.5 was taken as step 2 and replaced its value; report()
    on a Study object closed by a takeover did nothing where ask() and tell() raise."""
    first = Study("t", SPACE, seed=0, logdir=tmp_path, tensorboard=False)
    asked = first.ask()
    second = Study("t", SPACE, seed=0, logdir=tmp_path, tensorboard=False)  # takes it over
    with pytest.warns(UserWarning, match=r"trial 0 of study 't' had already ended \(FAILED: "):
        ended = second.tell(asked.number, 0.5)
    assert ended.state is TrialState.FAILED and ended.value is None
    with pytest.raises(StorageError, match="this study is closed"):
        first.report(asked, 0.5, 0)
    with pytest.raises(ValueError, match="no trial numbered 2.0 .* its number, an integer"):
        second.tell(2.0, 0.1)
    trial = second.ask()
    with pytest.warns(RuntimeWarning, match=r"step 2.5 is not a step number"):
        second.report(trial, 0.9, step=2.5)
    second.report(trial, 0.8, step=2)
    assert second.tell(trial, 0.7).value == 0.7
    with pytest.warns(UserWarning, match=r"had already ended \(COMPLETE, value 0.7\)"):
        assert second.tell(trial, 0.1).value == 0.7
    assert second.trials[1].intermediate == {0: 0.9, 2: 0.8}  # both kept, in order
    with pytest.raises(TypeError, match="expected a mapping of parameter names"):
        second.enqueue([("opt", "sgd")])
    second.close()
    first.close()


def test_optimize_inside_its_own_objective_fails_that_trial_not_the_count():
    """An objective that called study.optimize() ran an inner loop whose trials counted toward
    the outer one's total (n_trials=6 ended with 11). The inner call now fails its trial."""
    study = Study("nest", SPACE, seed=0, logdir=None)

    def objective(trial):
        if trial.number == 1:
            study.optimize(lambda t: 1.0, n_trials=9)
        return trial.params["x"]

    with pytest.warns(UserWarning, match="is already running its trials"):
        study.optimize(objective, n_trials=6)
    states = [t.state for t in study.trials]
    assert len(states) == 6 and states.count(TrialState.FAILED) == 1
    assert study.trials[1].state is TrialState.FAILED
    study.optimize(lambda t: 0.5, n_trials=7)  # after it: a loop runs again
    assert len(study.trials) == 7


def test_a_study_under_a_folder_name_that_is_not_utf8_resumes(tmp_path):
    """A folder named with Latin-1 bytes (``lat\\xe9in``, from an old archive): the first run
    worked and every later open failed with a UnicodeEncodeError traceback (the database's
    URI was quoted from the name as text)."""
    logdir = tmp_path / os.fsdecode(b"lat\xe9in")
    with Study("s", SPACE, seed=0, logdir=logdir, tensorboard=False) as study:
        study.optimize(lambda t: t.params["x"], n_trials=2)
    with Study("s", SPACE, seed=0, logdir=logdir, tensorboard=False) as study:
        study.optimize(lambda t: t.params["x"], n_trials=3)
    assert [t.state for t in load_study(logdir / "s").trials] == [TrialState.COMPLETE] * 3


def test_the_live_panel_lists_eight_running_trials_and_counts_the_rest():
    """Every running trial has a row (two workers showed one), up to eight: 32 Ray workers
    make a count, not a page."""
    import io

    from rich.console import Console

    from torchtune_hp.progress import ProgressView

    study = Study("p", SPACE, seed=0, logdir=None)
    out = io.StringIO()
    with ProgressView(study, 20, Console(file=out, width=200)) as view:
        asked = [study.ask() for _ in range(10)]
        study.tell(asked[0], 0.5)
        view.console.print(view._panel())
    shown = out.getvalue()
    assert [f"#{n}:" in shown for n in range(10)] == [False] + [True] * 8 + [False]
    assert "and 1 more running" in shown and "best" in shown and "0.5 (trial 0)" in shown
