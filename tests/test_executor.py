"""The subprocess executor with real processes: argv styles, the reporting ways, failures,
parallel workers and devices, Ctrl-C, pruning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import function_recipe, read_trials, run_cli, wait_seen, xy_recipe

from torchtune_hp import Float, Study, TrialState, report
from torchtune_hp.executors.argv import build_argv, lightning_cli_extras
from torchtune_hp.executors.devices import device_slots
from torchtune_hp.outcome import called_exit
from torchtune_hp.recipe import ConfigError, load_recipe
from torchtune_hp.runner import run_recipe
from torchtune_hp.storage import Storage

SCRIPTS = Path(__file__).parent / "scripts"
FAKE = str(SCRIPTS / "fake_train.py")


def write_recipe(tmp_path: Path, objective: dict, trials: int = 3, **sections) -> Path:
    """Runs in this process (run_recipe): the logdir must be absolute, or it would land in the
    folder pytest runs in."""
    return xy_recipe(tmp_path, objective, trials, logdir=str(tmp_path / "logs"), **sections)


def run(path: Path, *overrides: str) -> list:
    study = run_recipe(load_recipe(path, overrides))
    trials = study.trials
    study.close()
    return trials


def run_function(tmp_path: Path, source: str, trials: int, workers: int, *overrides: str) -> list:
    """``source`` as ``obj.py`` (its ``train`` is the objective), run by a recipe over x, y."""
    (tmp_path / "obj.py").write_text(source)
    objective = {"function": "obj.py:train"}
    return run(write_recipe(tmp_path, objective, trials, executor={"workers": workers}), *overrides)


def run_dir(tmp_path: Path, number: int) -> Path:
    return tmp_path / "logs" / "sub" / f"trial_{number:04d}"


def seen(tmp_path: Path, number: int) -> dict:
    return json.loads((run_dir(tmp_path, number) / "seen.json").read_text())


# -- argv ------------------------------------------------------------------------------------
PARAMS = {"lr": 0.01, "layers": 3, "act": "relu", "bn": True}


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("argparse", ["--lr", "0.01", "--layers", "3", "--act", "relu", "--bn", "True"]),
        ("equals", ["--lr=0.01", "--layers=3", "--act=relu", "--bn=True"]),
        ("hydra", ["lr=0.01", "layers=3", "act=relu", "bn=true"]),
        (
            "lightning_cli",
            ["--model.lr=0.01", "--model.layers=3", "--model.act=relu", "--model.bn=true"],
        ),
    ],
)
def test_each_argument_style_builds_exactly_this_argv(style, expected):
    assert build_argv(["python", "train.py"], PARAMS, style) == ["python", "train.py", *expected]


def test_a_lightning_cli_command_keeps_its_own_callback_and_logger():
    """A LightningCLI command run by hand first often names the callback already: the
    launcher added a second one and every trial failed (Lightning refuses two stateful
    callbacks of a type); and a logger it names (CSV, W&B) was replaced by ours in silence."""
    run_dir = Path("/tmp/study/trial_0003")
    ours = lightning_cli_extras(run_dir, command=["python", "train.py", "fit"])
    assert "--trainer.callbacks+=torchtune_hp.TuneCallback" in ours
    assert "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger" in ours
    own = [
        "python",
        "train.py",
        "fit",
        "--trainer.callbacks+=torchtune_hp.TuneCallback",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir=my_csv_logs",
    ]
    assert lightning_cli_extras(run_dir, command=own) == []


def test_rename_templates_and_precision():
    argv = build_argv(
        ["python", "t.py", "fit", "--optimizer.lr={lr}"],
        {"lr": 0.1 + 0.2, "layers": 3, "act": "gelu"},
        "lightning_cli",
        {"layers": "model.encoder.depth", "act": "activation"},
    )
    assert argv == [
        "python",
        "t.py",
        "fit",
        "--optimizer.lr=0.30000000000000004",  # repr: no precision lost; not appended again
        "--model.encoder.depth=3",
        "--model.activation=gelu",
    ]
    with pytest.raises(ValueError, match="names 'lrr'"):
        build_argv(["--lr={lrr}"], {"lr": 1.0})
    # format specs and conversions apply to the value itself
    assert build_argv(["--lr={lr:.3g}", "--opt={opt!r}", "--w={w:04d}"], P2) == [
        "--lr=0.00123",
        "--opt='adam'",
        "--w=0032",
    ]


P2 = {"lr": 0.001234567, "opt": "adam", "w": 32}


def test_a_null_choice_and_strings_hydra_would_split_reach_the_script_as_given():
    """A ``null`` choice reached hydra and LightningCLI scripts as the word ``None`` (Hydra
    and jsonargparse read it as a string, so ``cfg.opt is None`` never held, and the trial
    was recorded with None); a choice ``x,y`` failed every hydra trial ("Ambiguous value").
    The hydra forms below were each read back by Hydra 1.3.8's own override parser as the
    string given; jsonargparse (LightningCLI's parser) reads ``null`` here."""
    import jsonargparse

    choices = ["sgd", "x,y", "a b", "true", "1e-3", "it's", "back\\", "path/to:f.pt", "a~b", "café"]
    hydra = [build_argv([], {"opt": c}, "hydra")[0] for c in choices]
    assert hydra == [
        "opt=sgd",
        "opt='x,y'",
        "opt='a b'",
        "opt='true'",
        "opt='1e-3'",
        "opt='it\\'s'",
        "opt='back\\\\'",
        "opt=path/to:f.pt",
        "opt='a~b'",  # outside its unquoted characters
        "opt='café'",  # its unquoted words are ASCII
    ]
    assert build_argv([], {"opt": None, "on": True}, "hydra") == ["opt=null", "on=true"]
    assert build_argv(["x={opt}"], {"opt": "a b"}, "hydra") == ["x=a b"]  # a template: yours
    cli = build_argv([], {"opt": None, "width": None}, "lightning_cli")
    assert cli == ["--model.opt=null", "--model.width=null"]
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--model.opt", type=str | None, default="adam")
    parser.add_argument("--model.width", type=int | None, default=3)
    parsed = parser.parse_args(cli)
    assert parsed.model.opt is None and parsed.model.width is None
    assert build_argv([], {"opt": None}, "argparse") == ["--opt", "None"]  # argparse: a word


@pytest.mark.parametrize("style", ["argparse", "equals", "hydra"])
def test_a_real_script_receives_the_values(tmp_path, style):
    path = write_recipe(tmp_path, {"command": ["python", FAKE], "args": style}, trials=2)
    trials = run(path)
    for t in trials:
        assert t.state is TrialState.COMPLETE, t.error
        got = seen(tmp_path, t.number)["args"]
        assert float(got["x"]) == t.params["x"] and float(got["y"]) == t.params["y"]
        assert t.value == pytest.approx((t.params["x"] - 0.3) ** 2 + (t.params["y"] - 0.7) ** 2)


def test_command_objective_errors_name_the_key(tmp_path):
    bad = write_recipe(tmp_path, {"command": ["python", FAKE, "--z={zz}"]})
    with pytest.raises(ConfigError, match="objective.command.*zz"):
        run(bad)
    bad = write_recipe(tmp_path, {"command": ["python", FAKE], "rename": {"w": "width"}})
    with pytest.raises(ConfigError, match="objective.rename.*w"):
        run(bad)
    both = write_recipe(tmp_path, {"command": ["python"], "function": "f.py:train"})
    result = run_cli("validate", str(both))
    assert result.returncode == 2 and "exactly one of objective.function" in result.stderr


# -- the reporting ways ----------------------------------------------------------------------
def test_report_in_a_plain_script_and_asha_stops_it_early(tmp_path):
    path = write_recipe(
        tmp_path,
        {"command": ["python", FAKE, "--how", "report", "--epochs", "8"]},
        trials=6,
        pruner={"name": "asha", "min_resource": 1, "eta": 2},
    )
    trials = run(path)
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    for t in trials:
        epochs = int(
            (tmp_path / "logs" / "sub" / f"trial_{t.number:04d}" / "epochs.txt").read_text()
        )
        assert len(t.intermediate) == epochs  # every report reached the database
        if t.state is TrialState.PRUNED:
            assert epochs < 8  # the script stopped when report() said so
        else:
            assert epochs == 8 and t.value == t.intermediate[7]


def test_stdout_json_line(tmp_path):
    trials = run(write_recipe(tmp_path, {"command": ["python", FAKE, "--how", "json"]}))
    assert all(t.state is TrialState.COMPLETE for t in trials)


def test_stdout_regex_every_match_a_step_and_pruning_kills_the_script(tmp_path):
    path = write_recipe(
        tmp_path,
        {
            "command": ["python", FAKE, "--how", "regex", "--epochs", "6", "--epoch_sleep", "0.3"],
            "metric_regex": r"valid loss (?P<value>[0-9.]+)",
        },
        trials=4,
        pruner={"name": "asha", "min_resource": 1, "eta": 2},
    )
    trials = run(path)
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    assert complete and pruned
    for t in complete:
        assert sorted(t.intermediate) == list(range(6))
        assert t.value == pytest.approx(t.intermediate[5], abs=1e-6)
    for t in pruned:  # SIGTERM: the script never reached its end
        assert not (run_dir(tmp_path, t.number) / "epochs.txt").exists()
        assert len(t.intermediate) < 6


def test_tensorboard_tag_fallback(tmp_path):
    path = write_recipe(tmp_path, {"command": ["python", FAKE, "--how", "tensorboard"]})
    trials = run(path, "study.metric=valid/loss")
    for t in trials:
        assert t.state is TrialState.COMPLETE, t.error
        expected = (t.params["x"] - 0.3) ** 2 + (t.params["y"] - 0.7) ** 2 + 1.0 / 4
        assert t.value == pytest.approx(expected, rel=1e-6)  # the last step's value


def test_lightning_cli_script_untouched(tmp_path):
    """No code change: the launcher adds the callback and the logger through the CLI."""
    path = write_recipe(
        tmp_path,
        {
            "command": [
                "python",
                str(SCRIPTS / "cli_tiny.py"),
                "fit",
                "--trainer.max_epochs=5",
                "--trainer.accelerator=cpu",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_checkpointing=false",
            ],
            "args": "lightning_cli",
        },
        trials=2,
    )
    raw = yaml.safe_load(path.read_text())
    raw["space"] = {"lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}}
    raw["study"]["metric"] = "val_loss"
    path.write_text(yaml.safe_dump(raw))
    trials = run(path)
    for t in trials:
        assert t.state is TrialState.COMPLETE, t.error
        assert sorted(t.intermediate) == [0, 1, 2, 3, 4]  # the callback reported each epoch
        assert t.value == t.intermediate[4]
        folder = run_dir(tmp_path, t.number)
        assert list(folder.glob("events.out.tfevents.*"))  # Lightning's curves, no version_0
        assert [p.name for p in folder.iterdir() if p.is_dir()] == ["hparams"]


def test_report_outside_a_study_warns_and_does_nothing(monkeypatch):
    monkeypatch.delenv("TORCHTUNE_HP_TRIAL_DIR", raising=False)
    with pytest.warns(UserWarning, match="outside a study"):
        assert report(loss=1.0) is False


def test_report_in_process_records_and_prunes():
    study = Study(
        "inproc",
        {"x": Float(0, 1)},
        logdir=None,
        metric="loss",
        pruner="asha",
        pruner_options={"min_resource": 1, "eta": 2},
    )
    for x in (0.1, 0.9):
        study.enqueue({"x": x})

    def objective(trial):
        for epoch in range(5):
            if report(loss=trial.params["x"] * 10 / (epoch + 1), step=epoch, acc=0.5):
                break
        return trial.params["x"]

    study.optimize(objective, n_trials=2)
    good, bad = study.trials
    assert good.state is TrialState.COMPLETE and len(good.intermediate) == 5
    assert bad.state is TrialState.PRUNED and len(bad.intermediate) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_reports_that_never_name_the_metric_are_pointed_out(tmp_path, workers):
    """``report(val_loss=...)`` in a study whose metric is ``loss``: every report was
    dropped in silence (no curve, a pruner that never stopped anything). The trial's note
    and a warning now say which names it reported, in this process and in workers alike;
    one that also reports the metric, in another call, is not flagged."""
    source = (
        "import torchtune_hp\n\n"
        "def train(trial):\n"
        "    for epoch in range(3):\n"
        "        torchtune_hp.report(val_loss=trial.params['x'], step=epoch)\n"
        "        if trial.params['x'] < 0.5:\n"
        "            torchtune_hp.report(loss=trial.params['x'], step=epoch)\n"
        "    return trial.params['x']\n"
    )
    with pytest.warns(RuntimeWarning, match=r"its reports named \['val_loss'\], never 'loss'"):
        trials = run_function(tmp_path, source, 4, workers)
    for t in trials:
        assert t.state is TrialState.COMPLETE, t.error
        said = "never 'loss' (the study's metric), so none was recorded" in (t.note or "")
        assert said == (t.params["x"] >= 0.5), (t.params, t.note)
        assert len(t.intermediate) == (3 if t.params["x"] < 0.5 else 0)
    assert any(t.params["x"] >= 0.5 for t in trials) and any(t.params["x"] < 0.5 for t in trials)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_report_that_is_not_a_number_is_named_once_in_the_note(tmp_path, workers):
    """``report(loss="abc")``: in a worker the value was turned into its description there,
    and the driver described that text again: 'a str ("a str ('abc'), not a number"), not
    a number'. The note now reads as in this process."""
    source = (
        "import torch\nimport torchtune_hp\n\n"
        "def train(trial):\n"
        "    torchtune_hp.report(loss='abc', step=0)\n"
        "    torchtune_hp.report(loss=torch.ones(2), step=1)\n"
        "    torchtune_hp.report(loss=0.7, step=2)\n"
        "    return 0.7\n"
    )
    with pytest.warns(RuntimeWarning, match="was skipped"):
        (trial,) = run_function(tmp_path, source, 1, workers)
    assert trial.state is TrialState.COMPLETE and trial.intermediate == {2: 0.7}
    assert trial.note.splitlines() == [
        "a report of 'loss' was skipped: a str ('abc'), not a number",
        "a report of 'loss' was skipped: a Tensor with 2 elements (shape (2,)), not one number",
    ]


# -- failures --------------------------------------------------------------------------------
def test_crash_timeout_and_silence_fail_with_the_right_message_and_the_study_goes_on(tmp_path):
    path = write_recipe(tmp_path, {"command": ["python", FAKE], "timeout": 3}, trials=4)
    raw = yaml.safe_load(path.read_text())
    raw["space"] = {"mode": {"type": "categorical", "choices": ["crash", "hang", "silent", "ok"]}}
    raw["sampler"] = {"name": "grid", "shuffle": False}
    path.write_text(yaml.safe_dump(raw))
    start = time.monotonic()
    trials = {t.params["mode"]: t for t in run(path)}
    assert time.monotonic() - start < 60
    assert trials["crash"].state is TrialState.FAILED
    assert "exit code 1" in trials["crash"].error
    assert "something broke in the training script" in trials["crash"].error  # stderr tail
    assert trials["hang"].state is TrialState.FAILED
    assert "timed out after 3 s" in trials["hang"].error
    assert trials["silent"].state is TrialState.FAILED
    assert "never reported the metric 'loss'" in trials["silent"].error
    assert "stdout JSON keys []" in trials["silent"].error
    assert trials["ok"].state is TrialState.COMPLETE
    shown = run_cli("trials", str(tmp_path / "logs" / "sub"))
    assert "timed out" in shown.stdout and "never reported" in shown.stdout


HOSTILE = """
import json, sys
mode = sys.argv[sys.argv.index("--mode") + 1]
if mode == "plain":  # its own word on stderr, the metric not as JSON
    print("no GPU here, evaluating on the CPU", file=sys.stderr)
    print("loss=0.5")
elif mode == "flood":  # the metric, then more output than the driver reads
    print(json.dumps({"loss": 0.5}))
    sys.stdout.write(("x" * 1023 + "\\n") * 5 * 1024)
else:  # a failure, then a progress bar closing below it (as tqdm does)
    key = {"bar": "alpha", "tqdm": "omega"}[mode]  # not the parameter: fail_fast blanks it
    print("Traceback (most recent call last):\\nKeyError: '" + key + "'", file=sys.stderr)
    sys.stderr.write("\\r 50%|#####     | 10/20 [00:01<00:01]")
    sys.exit(1)
"""


def test_what_a_silent_or_failing_script_said_is_in_its_error(tmp_path):
    """From a user's trial of hostile scripts: a script that exits 0 without the metric had
    its stderr (its own reason) left out of the error; a line naming the metric, not as JSON,
    went unmentioned; a metric before the 4 MiB of stdout the driver reads was 'never
    reported'; and a progress bar drawn after a traceback was the table's error, so two
    failures behind the same bar were one error to fail_fast."""
    (tmp_path / "hostile.py").write_text(HOSTILE)
    path = write_recipe(tmp_path, {"command": ["python", str(tmp_path / "hostile.py")]}, 4)
    raw = yaml.safe_load(path.read_text())
    raw["space"] = {"mode": {"type": "categorical", "choices": ["plain", "flood", "bar", "tqdm"]}}
    raw["sampler"] = {"name": "grid", "shuffle": False}
    raw["study"]["fail_fast"] = 2
    path.write_text(yaml.safe_dump(raw))
    trials = {t.params["mode"]: t for t in run(path)}
    assert len(trials) == 4 and all(t.state is TrialState.FAILED for t in trials.values())
    plain = trials["plain"].error
    assert plain.startswith("stderr:\nno GPU here, evaluating on the CPU\n")
    assert "stdout names it as 'loss=0.5', not as JSON: print a JSON line" in plain
    flood = trials["flood"].error
    assert "only the last 4 MiB of its 5.0 MiB stdout were read (print the metric last)" in flood
    shown = run_cli("trials", str(tmp_path / "logs" / "sub")).stdout
    assert "KeyError: 'alpha'" in shown and "KeyError: 'omega'" in shown
    assert "10/20" not in shown


def test_a_failures_headline_passes_over_trailing_progress_bars_only():
    """The line the table, the progress line and fail_fast take from an error: a bar that
    tqdm (or rich) drew after the traceback is passed over; a message that merely has a
    '####' or a '|' in it is not (two such errors were one to fail_fast in a first try)."""
    from torchtune_hp.display import headline

    bar = "\r 50%|#####     | 10/20 [00:01<00:01, 9.9it/s]"
    assert headline(f"Traceback\nKeyError: 'a'\n{bar}\n" + "━" * 30 + " 100%") == "KeyError: 'a'"
    for message in ("ValueError: vocab has no token '####'", "RuntimeError: shapes | 3/4 [b]"):
        assert headline(f"Traceback\n  raise ValueError(msg)\n{message}") == message
    assert headline(bar) == bar.strip()  # nothing else: the bar itself
    assert headline("") == ""


# -- parallel workers and devices --------------------------------------------------------------
@pytest.mark.parametrize("per_device", [1, 2])
def test_two_workers_overlap_get_distinct_params_and_their_own_devices(tmp_path, per_device):
    """With trials_per_device: 2 as well: the devices are filled in turn, so two trials at once
    still run on two GPUs (both used to go to the first)."""
    path = write_recipe(
        tmp_path,
        {"command": ["python", FAKE, "--how", "json", "--sleep", "1.0"]},
        trials=4,
        executor={"workers": 2, "devices": [7, 9], "trials_per_device": per_device},
    )
    trials = run(path)
    assert all(t.state is TrialState.COMPLETE for t in trials)
    spans = sorted((t.start, t.end) for t in trials)
    assert any(b_start < a_end for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    keys = {json.dumps(t.params, sort_keys=True) for t in trials}
    assert len(keys) == 4
    by_trial = {t.number: seen(tmp_path, t.number) for t in trials}
    assert {v["cuda"] for v in by_trial.values()} == {"7", "9"}
    running_together = [
        (a, b)
        for a in trials
        for b in trials
        if a.number < b.number and b.start < a.end and a.start < b.end
    ]
    assert running_together
    for a, b in running_together:  # two trials at once never share a device
        assert by_trial[a.number]["cuda"] != by_trial[b.number]["cuda"]
    threads = {v["threads"] for v in by_trial.values()}
    assert threads == {str(max(1, (os.cpu_count() or 1) // 2))}


def test_device_slots(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    visible = lambda slots: [s.visible for s in slots]  # noqa: E731
    assert visible(device_slots("cpu", 2)) == ["", ""]
    assert visible(device_slots([0, 1, 2, 3], 4, devices_per_trial=2)) == ["0,1", "2,3"]
    # shared devices are filled in turn: two trials at once run on two GPUs, not both on GPU 0
    assert visible(device_slots([0, 1], 4, trials_per_device=2)) == ["0", "1", "0", "1"]
    with pytest.raises(ValueError, match="only 1 devices"):
        device_slots([0], 1, devices_per_trial=2)


def test_function_objective_in_two_worker_processes(tmp_path):
    (tmp_path / "obj.py").write_text(
        "import os\nimport torchtune_hp\n\n"
        "def train(trial, scale=1.0):\n"
        "    for epoch in range(3):\n"
        "        torchtune_hp.report(loss=scale * trial.params['x'] / (epoch + 1), step=epoch)\n"
        "    return {'loss': scale * trial.params['x'], 'pid': os.getpid()}\n"
    )
    path = write_recipe(
        tmp_path,
        {"function": "obj.py:train"},
        trials=4,
        executor={"workers": 2, "devices": "cpu"},
        train={"scale": 2.0},
    )
    trials = run(path)
    for t in trials:
        assert t.state is TrialState.COMPLETE, t.error
        assert t.value == pytest.approx(2.0 * t.params["x"])
        assert len(t.intermediate) == 3


def test_sys_exit_in_a_function_objective_in_a_worker_fails_its_trial(tmp_path):
    """``sys.exit(0)`` after a report, in a worker process: the process ended 0 with a
    report and no value, and the trial was recorded COMPLETE at that report (a run cut
    short, taken as final). It ends only the trial, FAILED, and says why; a trial that
    returns is untouched."""
    source = (
        "import sys\nimport torchtune_hp\n\n"
        "def train(trial):\n"
        "    torchtune_hp.report(loss=0.5, step=0)\n"
        "    if trial.params['x'] < 0.5:\n"
        "        sys.exit(0 if trial.params['x'] < 0.25 else 3)\n"
        "    return trial.params['x']\n"
    )
    trials = run_function(tmp_path, source, 8, 2, "study.fail_fast=0")
    xs = [t.params["x"] for t in trials]
    assert any(x < 0.25 for x in xs) and any(0.25 <= x < 0.5 for x in xs)  # both exits
    for t in trials:
        if t.params["x"] < 0.5:  # a nonzero exit also says what the objective did
            code = 0 if t.params["x"] < 0.25 else 3
            assert t.state is TrialState.FAILED
            assert f"called sys.exit({code}) in its worker process" in (t.error or "")
            assert "in train" in t.error  # the traceback says where
        else:
            assert (t.state, t.value) == (TrialState.COMPLETE, t.params["x"])


def test_sys_exit_with_a_message_in_a_worker_ends_its_error_with_what_happened(tmp_path):
    """``sys.exit('bye')``: Python printed 'bye' after our line, so the trials table (each
    error's last line) showed only 'bye'."""
    source = "import sys\n\ndef train(trial):\n    sys.exit('bye')\n"
    for t in run_function(tmp_path, source, 2, 2, "study.fail_fast=0"):
        assert t.state is TrialState.FAILED
        last = (t.error or "").strip().splitlines()[-1]
        assert last == called_exit("bye", " in its worker process")


# -- Ctrl-C --------------------------------------------------------------------------------------
def test_sigint_stops_every_trial_process_and_a_rerun_completes(tmp_path):
    path = write_recipe(
        tmp_path,
        {"command": ["python", FAKE, "--how", "json", "--sleep", "30"]},
        trials=3,
        executor={"workers": 2, "devices": "cpu"},
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torchtune_hp.cli", "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    study_dir = tmp_path / "logs" / "sub"
    pids = wait_seen(study_dir, 2, launcher, timeout=60)
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, err
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"trial process {pid} outlived the launcher"
    storage = Storage(study_dir / "study.db", read_only=True)
    trials = storage.trials()
    storage.close()
    assert len(trials) == 2 and all(t.state is TrialState.FAILED and t.interrupted for t in trials)
    rerun = run_cli("run", str(path), "objective.command=[python, " + FAKE + ", --how, json]")
    assert rerun.returncode == 0, rerun.stderr
    storage = Storage(study_dir / "study.db", read_only=True)
    done = [t for t in storage.trials() if t.state is TrialState.COMPLETE]
    storage.close()
    assert len(done) == 3


def test_a_timeout_is_kept_for_a_function_objective_with_one_worker(tmp_path):
    """One local worker runs a function in the driver's process, where nothing can stop a call
    that hangs: with objective.timeout it runs in a worker process instead (the timeout was
    accepted and ignored, and the study hung)."""
    source = (
        "import signal, time\n"
        "def train(trial):\n"
        "    if trial.number == 1:\n"
        "        time.sleep(600)\n"
        "    if trial.number == 2:  # a handler that goes on; it returns within the grace\n"
        "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "        time.sleep(4)\n"
        "    return trial.params['x']\n"
    )
    function_recipe(tmp_path, source, "hang", trials=4)
    started = time.monotonic()
    result = run_cli("run", "r.yaml", "objective.timeout=2", cwd=tmp_path)
    assert time.monotonic() - started < 120, "the timeout was not enforced"
    trials = read_trials(tmp_path / "logs" / "hang")
    assert result.returncode == 0, result.stderr
    for late in trials[1:3]:  # the last line, which the trials table shows, says why
        assert late.error.splitlines()[-1] == "timed out after 2 s (killed)", late.error
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAILED,
        TrialState.FAILED,  # a helper's: COMPLETE at 6 s, three times its limit
        TrialState.COMPLETE,
    ]


def script_recipe(tmp_path: Path, source: str, **objective: str) -> Path:
    """``source`` as ``script.py`` beside a one-trial recipe that runs it (``objective``: more
    of its section, such as ``metric_regex``)."""
    (tmp_path / "script.py").write_text(source)
    return write_recipe(tmp_path, {"command": ["python", "script.py"], **objective}, trials=1)


def test_a_script_whose_last_report_diverged_says_so(tmp_path):
    path = script_recipe(
        tmp_path,
        "import torchtune_hp\n"
        "torchtune_hp.report(loss=0.5, step=0)\n"
        "torchtune_hp.report(loss=float('nan'), step=1)\n",
    )
    (trial,) = run(path)
    assert trial.state is TrialState.FAILED
    assert "last report of 'loss' was NaN or inf (the run diverged)" in trial.error
    # read by metric_regex, the report is the line it printed: it did print a final value
    folder = tmp_path / "regex"
    folder.mkdir()
    source = "print('valid loss 0.5')\nprint('valid loss nan')\n"
    (printed,) = run(script_recipe(folder, source, metric_regex=r"valid loss (?P<value>\S+)"))
    assert printed.error == (
        "the 'loss' it printed last (metric_regex) was NaN or inf (the run diverged)"
    )


def test_a_metric_printed_to_stderr_only_is_pointed_out_and_a_signal_is_named(tmp_path):
    path = script_recipe(
        tmp_path,
        "import json, os, signal, sys\n"
        "print(json.dumps({'loss': 0.5}), file=sys.stderr)\n"
        "if float(sys.argv[sys.argv.index('--x') + 1]) < 0: os.kill(os.getpid(), signal.SIGSEGV)\n",
    )
    (trial,) = run(path)
    assert "a JSON line with 'loss' on stderr, where the metric is not read" in trial.error
    (crashed,) = run(path, "space.x.low=-2.0", "space.x.high=-1.0", "study.name=seg")
    assert crashed.error.startswith("exit code -11 (SIGSEGV)"), crashed.error


def test_launch_details_a_review_found():
    from torchtune_hp.executors.process import LaunchSpec, _signal_name

    assert _signal_name(11) == "SIGSEGV" and _signal_name(40)  # a real-time signal: described
    assert _signal_name(999) is None
    spec = LaunchSpec(["python", "-m", "train"], Path("/r"), python_path=("/r",))
    assert spec.environment({"PYTHONPATH": "/x"})["PYTHONPATH"] == os.pathsep.join(["/r", "/x"])
    assert spec.environment({})["PYTHONPATH"] == "/r"
    on_node = spec.moved(Path("/node/r"), "/node/python")  # a Ray node's copy of the folder
    assert on_node.environment({"PYTHONPATH": "/y"})["PYTHONPATH"] == os.pathsep.join(
        ["/node/r", "/y"]
    )


def test_an_endless_stdout_line_is_skipped_not_read_again_and_again(tmp_path):
    """A progress bar redrawn with \\r is one line that never ends: the driver reads a bounded
    chunk per poll, skips a line longer than MAX_LINE to its end, and still hears the metric
    lines after it (it used to reread the whole line at every poll: 300 MB took 1.1 GB)."""
    from torchtune_hp.executors import channel

    log = tmp_path / "stdout.log"
    log.write_bytes(b"epoch 0\n")
    tail = channel.LineTail(log)
    assert tail.new_lines() == ["epoch 0"]
    with open(log, "ab") as f:
        f.write(b"\r[=====>    ]" * (channel.READ_LIMIT // 6))  # 2 chunks' worth, no newline
    while tail.new_lines() == [] and tail.offset < log.stat().st_size:
        pass  # each call reads at most READ_LIMIT
    assert tail.skipping and tail.offset == log.stat().st_size
    with open(log, "ab") as f:
        f.write(b"\r[==========]\nvalid loss 0.25\n")
    assert tail.new_lines() == ["valid loss 0.25"] and not tail.skipping
    # end to end: a script prints such a line, then the lines its metric_regex reads
    source = (
        "import sys\n"
        "sys.stdout.write('\\r[=>  ]' * 2_000_000)\n"
        "print('\\nvalid loss 0.5')\n"
        "print('valid loss 0.25')\n"
    )
    (trial,) = run(script_recipe(tmp_path, source, metric_regex=r"valid loss (?P<value>[0-9.]+)"))
    assert trial.state is TrialState.COMPLETE and trial.value == 0.25
    assert trial.intermediate == {0: 0.5, 1: 0.25}


def test_a_last_line_without_its_newline_is_read_once_the_script_ends(tmp_path):
    """A helper's script ended with ``sys.stdout.write(f"val_loss {v}")`` (as ``echo -n``, or
    a ``\\r`` progress display that never ends its line): the line waited for its newline
    forever, and the trial FAILED saying the regex matched nothing, quoting that very line."""
    from torchtune_hp.executors import channel

    log = tmp_path / "stdout.log"
    log.write_bytes(b"epoch 0\n\rloss 0.5\rloss 0.25")
    tail = channel.LineTail(log)
    assert tail.new_lines() == ["epoch 0"]  # running: the last line may still grow
    assert list(tail.all_new_lines(final=True)) == ["", "loss 0.5", "loss 0.25"]
    assert tail.new_lines(final=True) == []  # read once
    source = (
        "import sys\nprint('val_loss 0.5')\nsys.stdout.write('\\rval_loss 0.375\\rval_loss 0.25')"
    )
    (trial,) = run(script_recipe(tmp_path, source, metric_regex=r"val_loss (?P<value>[0-9.]+)"))
    assert trial.state is TrialState.COMPLETE and trial.value == 0.25, trial.error
    assert trial.intermediate == {0: 0.5, 1: 0.375, 2: 0.25}


def test_a_timeout_does_not_count_the_time_a_trial_waits_for_the_drivers_answer(tmp_path):
    """Each report of a study with a pruner waits for the driver's answer, and a busy driver
    (a GP refit, the pictures) answers late: trials that had done their work in 0.5 s were
    recorded FAILED 'timed out after 1.5 s'. Here the driver answers 2 s late, past the
    1.5 s timeout: the trial still completes, as its own run took far less."""
    from torchtune_hp.executors.process import process_outcome

    source = (
        "import json, torchtune_hp\n"
        "torchtune_hp.report(loss=0.5, step=0)\n"
        "print(json.dumps({'loss': 0.25}))\n"
    )
    proc, (write, read) = launched_script(tmp_path, source, timeout_s=1.5)
    reports: list = []
    while not reports:
        assert proc.poll() is None, "the trial ended before it reported"
        reports = proc.reports()
        time.sleep(0.02)
    time.sleep(2.0)  # the driver is busy (or, on Ray, the answer is on its way)
    assert proc.poll() is None and proc.killed_for is None, "timed out waiting for the driver"
    proc.answer(reports[0], False)
    while (rc := proc.poll()) is None:
        time.sleep(0.02)
    os.close(write)
    os.close(read)
    outcome = process_outcome(
        tmp_path,
        "l1",
        rc,
        "loss",
        killed_for=proc.killed_for,
        pruned=False,
        timeout_s=1.5,
        started=proc.started,
    )
    assert outcome.state is TrialState.COMPLETE and outcome.value == 0.25, outcome


def test_without_a_pruner_a_report_waits_for_no_answer(tmp_path, monkeypatch):
    """Nothing can come back but 'go on': a launched trial of a study without a pruner does
    not wait for the driver at each report (it waited for the round trip, and a busy driver's
    slowness counted against the trial)."""
    from torchtune_hp.executors import remote

    monkeypatch.setenv(remote.ENV_TRIAL, "0")
    monkeypatch.setenv(remote.ENV_TRIAL_DIR, str(tmp_path))
    monkeypatch.setenv(remote.ENV_METRIC, "loss")
    monkeypatch.setenv(remote.ENV_PRUNER, "none")
    trial = remote.RemoteTrial.from_env()
    assert trial is not None and not trial.prunes
    started = time.monotonic()
    assert trial.report_values({"loss": 0.5}, 0) is False
    assert time.monotonic() - started < 1.0  # the driver never answers here: no 30 s wait
    assert (tmp_path / "report.jsonl").read_text().count('"loss": 0.5') == 1


def launched_script(tmp_path: Path, source: str, *argv: str, **options) -> tuple:
    """``source`` as ``script.py``, launched as the pool launches trial 0 (launch ``l1``,
    metric ``loss``); returns its TrialProcess and the ends of its watch pipe (to close)."""
    from torchtune_hp.executors.process import TrialProcess
    from torchtune_hp.executors.remote import ENV_LAUNCH, ENV_METRIC, ENV_TRIAL, ENV_TRIAL_DIR

    (tmp_path / "script.py").write_text(source)
    env = {**os.environ, ENV_TRIAL: "0", ENV_TRIAL_DIR: str(tmp_path), ENV_METRIC: "loss"}
    env[ENV_LAUNCH] = "l1"
    read, write = os.pipe()
    argv_all = [sys.executable, "script.py", *argv]
    proc = TrialProcess(argv_all, env, tmp_path, "l1", "loss", read, 1.0, **options)
    return proc, (write, read)


def judged_after_a_stop(proc, report, fds: tuple, **known) -> tuple:
    """Say stop to ``report`` of ``proc`` (a TrialProcess of launch ``l1`` on metric
    ``loss``), wait for it to end (bounded), close its watch pipe ``fds``, and return its exit
    code and its outcome as the pool judges it (``known``: more of what the pool knows)."""
    from torchtune_hp.executors.process import process_outcome

    proc.answer(report, True)
    deadline = time.monotonic() + 30
    while (rc := proc.poll()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for fd in fds:
        os.close(fd)
    outcome = process_outcome(
        proc.run_dir,
        "l1",
        rc,
        "loss",
        killed_for=proc.killed_for,
        pruned=proc.stopped_by_pruner,
        timeout_s=None,
        started=proc.started,
        **known,
    )
    return rc, outcome


@pytest.mark.parametrize("late", [True, False])
def test_a_stop_said_after_a_script_ended_leaves_it_as_it_ended(tmp_path, late):
    """A busy driver read a printing script's reports after it had trained to its end and
    exited 0, and the pruner's stop on its first report filed the whole run PRUNED: 29 of 96
    full runs in a soak, the best value among them lost. A stop said after the end leaves it
    COMPLETE, with a note; one said while it runs stops it, and it is PRUNED."""
    import re

    from torchtune_hp.executors.process import MISSED_STOP

    source = (
        "import sys, time\n"
        "for epoch, loss in enumerate([0.5, 0.4, 0.01]):\n"
        "    print(f'epoch {epoch} loss {loss}', flush=True)\n"
        "if sys.argv[1] == 'slow':\n"
        "    time.sleep(30)  # still training when the stop comes\n"
    )
    regex = re.compile(r"epoch \d+ loss (?P<value>\S+)")
    proc, (write, read) = launched_script(tmp_path, source, "fast" if late else "slow", regex=regex)
    reports: list = []
    while len(reports) < 3:
        reports += proc.reports()
        time.sleep(0.02)
    if late:
        proc.proc.wait(timeout=30)  # it has ended when the driver gets to its reports
    rc, outcome = judged_after_a_stop(
        proc, reports[0], (write, read), last_reported=reports[-1].value, regex=regex
    )
    assert proc.stopped_by_pruner is not late
    assert (MISSED_STOP in proc.problems) is late
    if late:
        assert (rc, outcome.state, outcome.value) == (0, TrialState.COMPLETE, 0.01)
    else:
        assert outcome.state is TrialState.PRUNED and proc.killed_for == "pruned"


def test_a_timeout_s_error_says_the_script_s_stderr_not_the_guard_s_line(tmp_path):
    """A script that catches SIGTERM and exits (as Lightning does) when its time runs out:
    the error quoted the guard's 'exited ... after SIGTERM ...: recorded as ended by the
    signal' above 'timed out', as if the script had been stopped by someone else."""
    source = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "print('training', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    (trial,) = run(script_recipe(tmp_path, source, timeout=1))
    assert trial.state is TrialState.FAILED
    assert trial.error == "stderr before it:\ntraining\ntimed out after 1 s (killed)"


def test_a_script_that_obeys_a_stop_at_once_is_pruned_however_late_the_driver_looks(
    tmp_path, monkeypatch
):
    """A script that reads the stop and exits within milliseconds: a driver descheduled
    between writing the verdict and looking at the process found it ended and took the stop
    for a missed one, filing a run stopped after one report COMPLETE at its early value."""
    from torchtune_hp.executors import channel
    from torchtune_hp.executors.process import MISSED_STOP

    write = channel.write_verdict

    def busy_driver(*args, **kwargs):  # the real write, then the driver is descheduled
        write(*args, **kwargs)
        time.sleep(1.0)

    monkeypatch.setattr(channel, "write_verdict", busy_driver)
    source = (
        "import sys, torchtune_hp\n"
        "for step, loss in enumerate([0.9, 0.5, 0.1]):\n"
        "    if torchtune_hp.report(loss=loss, step=step):\n"
        "        sys.exit(0)  # stopped: it ends at once\n"
    )
    proc, fds = launched_script(tmp_path, source)
    reports: list = []
    deadline = time.monotonic() + 30
    while not reports:
        assert time.monotonic() < deadline
        reports = proc.reports()
        time.sleep(0.02)
    _, outcome = judged_after_a_stop(proc, reports[0], fds, last_reported=0.9)
    assert proc.stopped_by_pruner and MISSED_STOP not in proc.problems
    assert outcome.state is TrialState.PRUNED
