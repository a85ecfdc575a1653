"""TensorBoard output read back from real event files, and from a real TensorBoard server."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata
from tiny_model import Tiny, loaders

from torchtune_hp import Categorical, Float, Int, Study, TrialState, TuneCallback, files
from torchtune_hp.board import events, study_board
from torchtune_hp.board.events import png_size
from torchtune_hp.board.figures import importance_png, slices_png
from torchtune_hp.gp.slices import unwarp
from torchtune_hp.storage import Storage

EPOCHS = 6


def read(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def lightning_objective(trial):
    """A real Lightning fit with the trial's logger and callback; lr=1e-4 cannot learn."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    torch.manual_seed(0)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        logger=trial.logger(),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[TuneCallback(trial)],
    )
    if trial.params["lr"] > 0.45:
        raise RuntimeError("diverged")  # a crashing trial: FAILED, its session too
    trainer.fit(Tiny(trial.params["lr"]), *loaders())
    return trainer.callback_metrics["val_loss"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("board")
    study = Study(
        "tb",
        {"lr": Float(1e-4, 0.5, log=True)},
        sampler="gp",
        sampler_options={"n_init": 4},
        seed=1,
        logdir=logdir,
        metric="val_loss",
        pruner="asha",
        pruner_options={"min_resource": 2, "eta": 2},
        images_every=2,
    )
    for lr in (0.1, 0.2, 0.49, 1e-4):  # two good, one that crashes, one that is pruned
        study.enqueue({"lr": lr})
    with pytest.warns(UserWarning, match="diverged"):
        study.optimize(lightning_objective, n_trials=9)
    study.close()
    return logdir / "tb"


def stored_trials(study_dir: Path) -> list:
    storage = Storage(study_dir / "study.db", read_only=True)
    try:
        return storage.trials()
    finally:
        storage.close()


def session_of(acc: EventAccumulator, tag: str):
    content = acc.SummaryMetadata(tag).plugin_data.content
    if tag == metadata.SESSION_START_INFO_TAG:
        return metadata.parse_session_start_info_plugin_data(content)
    return metadata.parse_session_end_info_plugin_data(content)


def error_text(acc: EventAccumulator) -> str:
    return acc.Tensors("error")[-1].tensor_proto.string_val[0].decode()


def test_one_session_per_trial_with_params_state_and_final_objective(study_dir):
    trials = stored_trials(study_dir)
    states = [t.state for t in trials]
    assert len(trials) == 9 and states[:4] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.FAILED,
        TrialState.PRUNED,
    ]
    names = [f"trial_{t.number:04d}" for t in trials]
    assert sorted(p.name for p in study_dir.iterdir() if p.is_dir()) == ["study", *names]
    for t in trials:
        run = study_dir / f"trial_{t.number:04d}"
        # the running session is gone; no version_0 or timestamped runs
        assert [p.name for p in run.iterdir() if p.is_dir()] == ["hparams"]
        acc = read(run / "hparams")
        start = session_of(acc, metadata.SESSION_START_INFO_TAG)
        assert start.group_name == ""  # grouped by the run's path: unique in any logdir
        assert start.hparams["lr"].number_value == pytest.approx(t.params["lr"], rel=1e-12)
        assert start.hparams["study"].string_value == "tb"
        assert start.hparams["state"].string_value == t.state.value
        end = session_of(acc, metadata.SESSION_END_INFO_TAG)
        expected = (
            api_pb2.STATUS_FAILURE if t.state is TrialState.FAILED else api_pb2.STATUS_SUCCESS
        )
        assert end.status == expected
        if t.state is TrialState.FAILED:
            assert acc.Tags()["scalars"] == []  # no objective value at all
            assert "RuntimeError: diverged" in error_text(acc)
            continue
        # the HParams metric: the reports, then the value in the database last
        series = acc.Scalars("objective/val_loss")
        assert acc.Tags()["scalars"] == ["objective/val_loss"]
        assert series[-1].value == pytest.approx(t.value, rel=1e-6)  # float32 in TensorBoard
        assert [e.step for e in series] == sorted(e.step for e in series)
        steps = sorted(t.intermediate)
        assert [e.value for e in series[: len(steps)]] == pytest.approx(
            [t.intermediate[k] for k in steps], rel=1e-6
        )
        # Lightning's own curves, in the trial's folder (not a metric column)
        lightning = read(run)
        assert "hp_metric" not in lightning.Tags()["scalars"]
        assert len(lightning.Scalars("val_loss")) == len(t.intermediate)
        if t.state is TrialState.PRUNED:
            assert len(t.intermediate) < EPOCHS


def test_study_run_has_best_so_far_views_and_gp_pictures_to_the_end(study_dir):
    acc = read(study_dir / "study")
    assert metadata.EXPERIMENT_TAG not in acc.Tags()["tensors"]  # columns come from sessions
    best = acc.Scalars("study/best_val_loss")
    values = [e.value for e in best]
    assert values == sorted(values, reverse=True)  # best so far: never worse
    assert [e.step for e in best] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    complete = [t for t in stored_trials(study_dir) if t.state is TrialState.COMPLETE]
    objective = acc.Scalars("study/val_loss")  # the COMPLETE trials (not failed/pruned)
    assert [(e.step, e.value) for e in objective] == [
        (t.number, pytest.approx(t.value, rel=1e-6)) for t in complete
    ]
    assert acc.Tags()["images"] == []  # the pictures have runs of their own
    gp, views = read(study_dir / "study" / "gp"), read(study_dir / "study" / "views")
    steps = [e.step for e in gp.Images("gp/slices")]
    # before trials 4 and 6 (2 and 8 are enqueued or in the initial design), and at the end
    assert steps[-1] == 9 and all(s % 2 == 0 and s >= 4 for s in steps[:-1])
    first = gp.Images("gp/slices")[0]
    assert first.encoded_image_string[:4] == b"\x89PNG" and first.width > 300
    assert gp.Images("gp/importance")[-1].step == 9
    for view in ("history", "curves", "slices", "pairs", "parallel"):
        images = views.Images(f"views/{view}")
        assert [e.step for e in images][-1] == 9, view  # once more when the study ended
        assert images[-1].encoded_image_string[:4] == b"\x89PNG" and images[-1].width >= 300


def test_a_trials_duration_leaves_out_the_gp_pictures_drawn_before_it_started(
    tmp_path, monkeypatch
):
    """An objective that returns at once showed 2.6-5.7 s on every 5th trial of a user's
    300-trial study: the study recorded the trial, then drew the GP's pictures for it, then
    handed it out. That wait is kept with its paused time, as a Ray trial's wait to be
    placed is."""
    monkeypatch.setattr(study_board, "FIRST_DRAW_GUESS_S", 0.0)
    monkeypatch.setattr(study_board, "DRAW_BUDGET", 0.0)  # pictures at every ask
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    with Study("dur", space, sampler="gp", seed=0, logdir=tmp_path, images_every=1) as study:
        study.optimize(lambda t: (t.params["x"] - 0.3) ** 2 + t.params["y"], n_trials=8)
        trials = {t.number: t for t in study.trials}
    steps = [e.step for e in read(tmp_path / "dur" / "study" / "gp").Images("gp/slices")]
    drawn = [n for n in steps if n < 8]  # drawn before trial n was handed out (8: the end)
    assert len(drawn) >= 2
    for n in drawn:
        t = trials[n]
        left_out = (t.end - t.start).total_seconds() - t.duration_s
        assert left_out == pytest.approx(t.paused_s, abs=0.01)  # the drawing, kept as paused
        assert t.paused_s > max(0.02, 2 * t.duration_s)  # drawing outlasts this objective
    assert max(t.duration_s for t in trials.values()) < 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Requested-With": "XMLHttpRequest"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


class Board:
    """A real TensorBoard server over ``logdir``, asked over HTTP what its HParams dashboard
    shows (the requests its web page makes)."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(logdir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--reload_interval",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}/data/plugin"

    def groups(self, col_params=(), statuses=ALL_STATUSES) -> dict[str, dict]:
        request = {
            "experimentName": "",
            "allowedStatuses": list(statuses),
            "colParams": list(col_params),
            "startIndex": 0,
            "sliceSize": 1000,
        }
        answer = post(f"{self.base}/hparams/session_groups", request)
        return {g["name"]: g for g in answer.get("sessionGroups", [])}

    def wait_for(self, condition, what: str, timeout: float = 90.0) -> dict[str, dict]:
        deadline, groups = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            try:
                groups = self.groups()
            except OSError:  # not listening yet
                groups = {}
            if condition(groups):
                return groups
            time.sleep(0.5)
        raise AssertionError(f"TensorBoard never showed {what}: {sorted(groups)}")

    def experiment(self) -> dict:
        return post(f"{self.base}/hparams/experiment", {"experimentName": ""})

    def text(self, run: str, tag: str) -> str:
        query = urllib.parse.urlencode({"run": run, "tag": tag})
        with urllib.request.urlopen(f"{self.base}/text/text?{query}", timeout=10) as response:
            return " ".join(e["text"] for e in json.loads(response.read()))

    def image_steps(self, run: str, tag: str) -> list[int]:
        query = urllib.parse.urlencode({"run": run, "tag": tag, "sample": 0})
        with urllib.request.urlopen(f"{self.base}/images/images?{query}", timeout=10) as answer:
            return [e["step"] for e in json.loads(answer.read())]

    def close(self) -> None:
        self.server.kill()
        self.server.wait(timeout=10)


def metrics_of(group: dict) -> dict[str, float]:
    return {m["name"]["tag"]: m["value"] for m in group["metricValues"]}


def check_row(group: dict, t, study: str, metric: str) -> None:
    """One row equals the trial's row in the database."""
    assert group["hparams"]["study"] == study
    assert group["hparams"]["state"] == t.state.value
    for name, value in t.params.items():
        assert group["hparams"][name] == pytest.approx(value), name
    status = group["sessions"][0]["status"]
    metrics = metrics_of(group)
    if t.state is TrialState.FAILED:
        assert metrics == {} and status == "STATUS_FAILURE"
    else:
        assert metrics == {f"objective/{metric}": pytest.approx(t.value, rel=1e-6)}
        assert status == "STATUS_SUCCESS"


def acc_objective(trial):
    """Also writes HParams of its own into its folder, as many scripts do (Lightning's default
    hp_metric, add_hparams): they must not replace the board's columns and rows."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(trial.study.trial_dir(trial.number) / "own")) as writer:
        writer.add_hparams({"width": trial.params["width"]}, {"hp/acc": 0.5})
    trial.report(trial.params["width"] / 128, 0)  # a failure's too: its failed_curve run
    if trial.params["act"] == "tanh" and trial.params["width"] > 40:
        raise RuntimeError("too wide for tanh")
    return trial.params["width"] / 64


@pytest.mark.slow
def test_tensorboard_server_shows_two_studies_in_one_logdir_row_by_row(study_dir):
    """Two studies of different spaces, metrics and modes under one logdir: every trial its own
    row, equal to the database; states filterable; a running trial shown as running, then as
    what it became; the failed trial's error in the Text tab."""
    logdir = study_dir.parent
    other = Study(
        "acc",
        {"width": Int(8, 64), "act": Categorical(["relu", "tanh"])},
        metric="acc",
        mode="max",
        logdir=logdir,
        seed=0,
    )
    other.enqueue({"width": 60, "act": "tanh"})  # a failure
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other.optimize(acc_objective, n_trials=6)
    running = other.ask()
    running.report(0.25, 0)
    board = Board(logdir)
    try:
        tb = {f"tb/trial_{t.number:04d}/hparams": t for t in stored_trials(study_dir)}
        acc = {f"acc/trial_{t.number:04d}/hparams": t for t in other.trials if t.state.finished}
        running_row = f"acc/trial_{running.number:04d}/running"
        groups = board.wait_for(lambda g: len(g) == 16, "16 rows")
        assert sorted(groups) == sorted([*tb, *acc, running_row])
        for name, t in tb.items():
            check_row(groups[name], t, "tb", "val_loss")
            assert not {"width", "act"} & set(groups[name]["hparams"])
        for name, t in acc.items():
            check_row(groups[name], t, "acc", "acc")
            assert "lr" not in groups[name]["hparams"]
        live = groups[running_row]
        assert live["hparams"]["state"] == "RUNNING"
        assert live["sessions"][0]["status"] == "STATUS_RUNNING"
        assert metrics_of(live) == {"objective/acc": 0.25}
        assert any(t.state is TrialState.FAILED for t in acc.values())
        failed_acc = next(t for t in acc.values() if t.state is TrialState.FAILED)
        curve = logdir / "acc" / f"trial_{failed_acc.number:04d}" / "failed_curve"
        assert curve.is_dir()  # a curve in the Scalars tab, no row or metric column (below)

        experiment = board.experiment()  # the columns: the union of both studies
        infos = {h["name"]: h for h in experiment["hparamInfos"]}
        assert set(infos) == {"lr", "width", "act", "study", "state"}
        assert sorted(infos["study"]["domainDiscrete"]) == ["acc", "tb"]
        assert sorted(infos["state"]["domainDiscrete"]) == [
            "COMPLETE",
            "FAILED",
            "PRUNED",
            "RUNNING",
        ]
        assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {
            "objective/val_loss",
            "objective/acc",
        }
        # the state column is a filter to tick; the status filter knows running trials
        pruned = board.groups([{"hparam": "state", "filterDiscrete": ["PRUNED"]}])
        assert sorted(pruned) == sorted(n for n, t in tb.items() if t.state is TrialState.PRUNED)
        assert list(board.groups(statuses=["STATUS_RUNNING"])) == [running_row]
        failed = next(n for n, t in tb.items() if t.state is TrialState.FAILED)
        assert "RuntimeError: diverged" in board.text(failed, "error")

        other.tell(running, 0.75)
        done_row = f"acc/trial_{running.number:04d}/hparams"
        groups = board.wait_for(
            lambda g: done_row in g and running_row not in g, "the running trial's end"
        )
        assert groups[done_row]["hparams"]["state"] == "COMPLETE"
        assert metrics_of(groups[done_row]) == {"objective/acc": 0.75}
        assert len(groups) == 16
    finally:
        board.close()
        other.close()

    board = Board(study_dir)  # the logdir pointed at one study
    try:
        groups = board.wait_for(lambda g: len(g) == 9, "9 rows")
        assert sorted(groups) == sorted(n.removeprefix("tb/") for n in tb)
        for name, t in tb.items():
            check_row(groups[name.removeprefix("tb/")], t, "tb", "val_loss")
    finally:
        board.close()


def test_an_interrupted_trial_ends_failed_and_a_dead_drivers_sessions_are_rebuilt(tmp_path):
    space = {"x": Float(0.0, 1.0)}
    study = Study("ctrl_c", space, logdir=tmp_path, seed=0)

    def objective(trial):
        trial.report(0.5, 0)
        if trial.number == 1:
            raise KeyboardInterrupt
        return trial.params["x"]

    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=3)
    study.close()
    acc = read(tmp_path / "ctrl_c" / "trial_0001" / "hparams")
    assert session_of(acc, metadata.SESSION_END_INFO_TAG).status == api_pb2.STATUS_FAILURE
    start = session_of(acc, metadata.SESSION_START_INFO_TAG)
    assert start.hparams["state"].string_value == "FAILED"
    assert "interrupted" in error_text(acc)
    assert not (tmp_path / "ctrl_c" / "trial_0001" / "running").exists()
    # its reports: no objective in its session (no result in the table), a curve beside it
    assert acc.Tags()["scalars"] == []
    curve = read(tmp_path / "ctrl_c" / "trial_0001" / "failed_curve").Scalars("objective/value")
    assert [(e.step, e.value) for e in curve] == [(0, 0.5)]
    # trial 0 reported 0.5 at step 0, then returned x: the return value is written last
    acc0 = read(tmp_path / "ctrl_c" / "trial_0000" / "hparams")
    series = acc0.Scalars("objective/value")
    assert [e.step for e in series] == [0, 1]
    assert series[-1].value == pytest.approx(stored_trials(tmp_path / "ctrl_c")[0].value)

    # a driver that died mid-trial left a running session and no final one, or both: the
    # next run of the study writes the final one from the database; an HParams experiment
    # left in the study folder (torchtune_hp 0.1 wrote one there) is taken out, its other
    # events kept
    shutil.rmtree(tmp_path / "ctrl_c" / "trial_0000" / "hparams")
    (tmp_path / "ctrl_c" / "trial_0001" / "running").mkdir()
    old = old_experiment(tmp_path / "ctrl_c")
    Study("ctrl_c", space, logdir=tmp_path).close()
    assert b"_hparams_" not in old.read_bytes()
    assert [e.value for e in read_file(old).Scalars("old/scalar")] == [1.5]
    rebuilt = read(tmp_path / "ctrl_c" / "trial_0000" / "hparams").Scalars("objective/value")
    assert [(e.step, e.value) for e in rebuilt] == [(e.step, e.value) for e in series]
    assert (tmp_path / "ctrl_c" / "trial_0001" / "hparams").is_dir()
    assert not (tmp_path / "ctrl_c" / "trial_0001" / "running").exists()


def test_a_diverged_trial_shows_inf_not_its_last_good_report(tmp_path):
    """A run that reported 0.77 and then inf (diverged) and was pruned: its value is inf, and
    the HParams table, which shows the last point of the objective, showed 0.77, ranking it
    among the good runs."""

    class PruneAtTwo:
        name = "at_two"

        def prune(self, trial, others, mode):
            return len(trial.intermediate) >= 2

    study = Study("div", {"x": Float(0.0, 1.0)}, logdir=tmp_path, pruner=PruneAtTwo(), seed=0)

    def objective(trial):
        trial.report(0.77, 0)
        trial.report(math.inf, 1)
        return 9.0 if trial.should_prune() else 0.3

    study.optimize(objective, n_trials=1)
    study.close()
    (trial,) = stored_trials(tmp_path / "div")
    assert trial.state is TrialState.PRUNED and trial.value == math.inf
    series = read(tmp_path / "div" / "trial_0000" / "hparams").Scalars("objective/value")
    assert [(e.step, e.value) for e in series] == [(0, pytest.approx(0.77)), (1, math.inf)]


def test_drawing_odd_names_and_values_says_nothing_to_the_user(tmp_path):
    """An emoji or a tab in a categorical value and a very long parameter name: matplotlib's
    remarks (a glyph the font lacks, a layout that does not fit) reached the terminal as
    warnings after every drawing; the pictures are drawn all the same."""
    long = "a_" + "very_" * 40 + "long_name"
    space = {long: Float(0.0, 1.0), "act": Categorical(["relu 🙂", "tab\tx", "plain"])}
    study = Study("odd", space, sampler="gp", logdir=tmp_path, seed=0, images_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(lambda t: t.params[long] + len(t.params["act"]) * 0.01, n_trials=7)
        study.close()
    assert [str(w.message) for w in caught] == []
    assert "views/history" in read(tmp_path / "odd" / "study" / "views").Tags()["images"]
    assert "gp/slices" in read(tmp_path / "odd" / "study" / "gp").Tags()["images"]


def old_experiment(folder: Path) -> Path:
    """An event file as torchtune_hp 0.1 (or Lightning's hp_metric) wrote: an HParams
    experiment and session beside a scalar."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    with SummaryWriter(str(folder)) as writer:
        for summary in hparams({"x": 0.5}, {"old/metric": 1.0}):
            writer.file_writer.add_summary(summary)
        writer.add_scalar("old/scalar", 1.5, 0)
        path = (
            Path(writer.file_writer.get_logdir())
            / sorted(p.name for p in folder.iterdir() if "tfevents" in p.name)[-1]
        )
    assert b"_hparams_/experiment" in path.read_bytes()
    return path


def read_file(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_mixed_space_sessions_and_pictures(tmp_path, monkeypatch):
    space = {
        "lr": Float(1e-4, 1.0, log=True),
        "width": Int(8, 256, log=True),
        "act": Categorical(["relu", "gelu", 1]),  # mixed choices: shown as strings
        "flag": Categorical([True, False]),
        "state": Categorical(["a", "b"]),  # a parameter named like our column
    }
    # the first pictures come once the study has run ten times as long as a drawing is
    # guessed to take: guess nothing, so they come at once here
    monkeypatch.setattr(study_board, "FIRST_DRAW_GUESS_S", 0.0)
    study = Study("mixed", space, sampler="gp", seed=0, logdir=tmp_path, images_every=1)

    def objective(trial):
        p = trial.params
        return (math.log10(p["lr"]) + 2) ** 2 + 0.01 * p["width"] + (p["act"] == "gelu")

    study.optimize(objective, n_trials=12)
    study.close()
    start = session_of(
        read(tmp_path / "mixed" / "trial_0011" / "hparams"), metadata.SESSION_START_INFO_TAG
    )
    t = study.trial(11)
    assert start.hparams["act"].string_value == str(t.params["act"])
    assert start.hparams["flag"].bool_value is t.params["flag"]
    assert start.hparams["width"].number_value == t.params["width"]
    assert start.hparams["state (parameter)"].string_value == t.params["state"]
    assert start.hparams["state"].string_value == "COMPLETE"
    assert len(read(tmp_path / "mixed" / "study" / "gp").Images("gp/slices")) >= 1
    # redrawn as trials end (fast trials: at most a tenth of the time), and at the end
    steps = [e.step for e in read(tmp_path / "mixed" / "study" / "views").Images("views/history")]
    assert steps[0] == 1 and steps[-1] == 12 and steps == sorted(set(steps))
    assert len(steps) < 12  # paced: not after every one of these fast trials


def test_fast_trials_get_pictures_at_the_end_and_reading_a_study_draws_nothing(tmp_path):
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    study = Study("fast", space, sampler="gp", seed=0, logdir=tmp_path, images_every=1)
    study.add({"x": 0.5, "y": 0.5}, 0.5)  # a warm start: a row of its own too, and one of 13
    study.optimize(lambda t: t.params["x"] + t.params["y"], n_trials=13)
    study.close()
    run = tmp_path / "fast" / "study"
    assert [e.step for e in read(run / "views").Images("views/history")] == [13]
    assert [e.step for e in read(run / "gp").Images("gp/slices")] == [13]
    assert (tmp_path / "fast" / "trial_0000" / "hparams").is_dir()
    Study("fast", space, logdir=tmp_path).close()  # opened to read: no new pictures
    assert [e.step for e in read(run / "views").Images("views/history")] == [13]
    # a driver killed while it drew its last pictures (its run's trials all done) left the
    # mark of an earlier full drawing: the rerun, which runs no trial, draws them (it drew
    # nothing, and the pictures stayed at an earlier step for good)
    (run / study_board.DRAWN_MARK).write_text("10")
    Study("fast", space, sampler="gp", logdir=tmp_path, images_every=1).close()
    assert [e.step for e in read(run / "views").Images("views/history")] == [13, 13]
    assert (run / study_board.DRAWN_MARK).read_text() == "13"


def test_deleted_event_files_are_written_again(tmp_path):
    """A helper deleted every event file of a running study (find -name 'events.out*'
    -delete): the study run's points were gone for good, even of trials that finished later
    and after a rerun, and a trial whose emptied session folder remained never got its row
    back. The study run is started again from every finished trial the moment its file is
    found gone, and a rerun writes what is missing."""
    space = {"x": Float(0.0, 1.0)}
    run = tmp_path / "del" / "study"

    def delete_every_event_file(study, trial) -> None:
        if trial.number == 2:
            for f in (tmp_path / "del").rglob("events.out.tfevents.*"):
                f.unlink()

    with Study("del", space, sampler="sobol", seed=0, logdir=tmp_path, images_every=0) as study:
        study.optimize(lambda t: t.params["x"], n_trials=5, callbacks=[delete_every_event_file])
        values = {t.number: t.value for t in study.trials}
    points = {e.step: e.value for e in read(run).Scalars("study/value")}
    assert points == pytest.approx(values)  # trials 0-2 written again, 3-4 as they ended
    best = [e.value for e in read(run).Scalars("study/best_value")]
    assert best[-len(values) :] == pytest.approx(np.minimum.accumulate(list(values.values())))
    for f in (tmp_path / "del").rglob("events.out.tfevents.*"):  # and once more, study ended
        f.unlink()
    with Study("del", space, sampler="sobol", seed=0, logdir=tmp_path, images_every=0):
        pass  # opened by a driver: what is missing is written
    assert {e.step: e.value for e in read(run).Scalars("study/value")} == pytest.approx(values)
    for number, value in values.items():
        session = read(tmp_path / "del" / f"trial_{number:04d}" / "hparams")
        assert [e.value for e in session.Scalars("objective/value")] == pytest.approx([value])

    def deletes_first(trial) -> float:  # the earlier runs' files, before this run wrote any
        if trial.number == 5:
            for f in run.glob("events.out.tfevents.*"):
                f.unlink()
        return trial.params["x"]

    with Study("del", space, sampler="sobol", seed=0, logdir=tmp_path, images_every=0) as study:
        study.optimize(deletes_first, n_trials=7)
        values = {t.number: t.value for t in study.trials}
    assert {e.step: e.value for e in read(run).Scalars("study/value")} == pytest.approx(values)


def test_the_best_so_far_never_rises_when_trials_end_out_of_order(tmp_path):
    """A helper's study with two workers: trial 0, slow and good, ended after trials 1 and 2,
    and its best went back at step 0, so the curve read 0.1, 0.9, 0.8 (rising, and ending
    above the study's best); rebuilt from the rows it read otherwise again. The best now goes
    at the highest number ended so far, live and rebuilt alike."""
    space, run = {"x": Float(0.0, 1.0)}, tmp_path / "ooo" / "study"
    with Study("ooo", space, sampler="sobol", seed=0, logdir=tmp_path, images_every=0) as study:
        asked = [study.ask() for _ in range(3)]
        for trial, value in ((asked[1], 0.9), (asked[2], 0.8), (asked[0], 0.1)):
            study.tell(trial, value)
    live = [(e.step, e.value) for e in read(run).Scalars("study/best_value")]
    assert [s for s, _ in live] == [1, 2, 2] and [v for _, v in live] == pytest.approx(
        [0.9, 0.8, 0.1]
    )
    assert [e.step for e in read(run).Scalars("study/value")] == [1, 2, 0]  # by number
    for f in run.glob("events.out.tfevents.*"):
        f.unlink()
    with Study("ooo", space, sampler="sobol", seed=0, logdir=tmp_path, images_every=0):
        pass  # rebuilt from the rows, in the order the trials ended
    assert [(e.step, e.value) for e in read(run).Scalars("study/best_value")] == live


def our_event_files(run: Path) -> list[Path]:
    return sorted(run.glob("events.out.tfevents.*.torchtune_hp"))


@pytest.mark.slow
def test_each_redraw_replaces_the_pictures_file_and_tensorboard_shows_the_latest(
    tmp_path, monkeypatch
):
    """A study that redraws all night kept every redraw in one event file (about 570 KB each at
    800 trials): each redraw now goes to a new file that replaces the one before, once that was
    replaced a minute ago (here at once), and an open TensorBoard follows to the latest."""
    monkeypatch.setattr(study_board, "FIRST_DRAW_GUESS_S", 0.0)
    monkeypatch.setattr(study_board, "DRAW_BUDGET", 0.0)  # a drawing after every trial
    monkeypatch.setattr(events, "REPLACED_GRACE_S", 0.0)
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)}
    board = Board(tmp_path)
    try:
        study = Study("rot", space, sampler="gp", seed=0, logdir=tmp_path, images_every=1)
        study.optimize(lambda t: (t.params["x"] - 0.3) ** 2 + t.params["y"], n_trials=4)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # the open board has read the first drawings
            try:
                if board.image_steps("rot/study/views", "views/history"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        study.optimize(lambda t: (t.params["x"] - 0.3) ** 2 + t.params["y"], n_trials=12)
        study.close()
        run = tmp_path / "rot" / "study"
        for sub, tag in (("views", "views/history"), ("gp", "gp/slices")):
            assert len(our_event_files(run / sub)) == 1, sub  # one set of pictures on disk
            assert [e.step for e in read(run / sub).Images(tag)] == [12]
        assert read(run).Tags()["images"] == []
        deadline = time.monotonic() + 90
        while board.image_steps("rot/study/views", "views/history")[-1:] != [12]:
            assert time.monotonic() < deadline, "the open board never showed the last drawing"
            time.sleep(0.5)
        seen = board.image_steps("rot/study/views", "views/history")
        assert seen[0] < 12 and seen == sorted(seen)  # it keeps the steps it read before
    finally:
        board.close()
    board = Board(tmp_path)  # started afresh: the latest pictures alone
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if board.image_steps("rot/study/gp", "gp/importance") == [12]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "a new board never showed the pictures"
            time.sleep(0.5)
    finally:
        board.close()


PNG = (Path(__file__).parent.parent / "docs" / "gp_importance.png").read_bytes()  # a picture


def test_replaced_pictures_stay_a_while_for_tensorboards_classic_loader(tmp_path, monkeypatch):
    """The classic loader (--load_fast=false) reads a run's files in turn and stops for good
    at a file deleted under it; a replaced file goes only once its successor is older than
    the grace, aged on the file system's clock (the new file's time), never this host's."""
    folder = tmp_path / "pictures"
    for step in range(3):
        events.write_replacing(folder, {"p": PNG}, step)
    assert len(our_event_files(folder)) == 3  # all within the grace
    first, second, _ = our_event_files(folder)
    old = time.time() - 2 * events.REPLACED_GRACE_S
    os.utime(second, (old, old))  # the second was written long ago: the first goes
    os.utime(first, (old - 1, old - 1))
    (folder / "notes.txt").write_text("a file of the user's")
    real_time_ns = time.time_ns
    monkeypatch.setattr(events.time, "time_ns", lambda: real_time_ns() + 10**13)  # skewed host
    events.write_replacing(folder, {"p": PNG}, 3)
    assert our_event_files(folder)[0] == second and len(our_event_files(folder)) == 3
    assert (folder / "notes.txt").exists()
    assert [e.step for e in read(folder).Images("p")] == [1, 2, 3]

    # the loader itself, reloaded between redraws: with no grace it never gets past the
    # first file; with the grace it follows every redraw
    for grace, seen in ((0.0, [0]), (events.REPLACED_GRACE_S, [0, 1, 2, 3])):
        monkeypatch.setattr(events, "REPLACED_GRACE_S", grace)
        run = tmp_path / f"grace_{grace:g}"
        acc = EventAccumulator(str(run), size_guidance={"images": 0})
        for step in range(4):
            events.write_replacing(run, {"p": PNG}, step)
            time.sleep(0.01)  # distinct times
            acc.Reload()
        assert [e.step for e in acc.Images("p")] == seen, grace


def test_a_pictures_write_that_fails_leaves_no_partial_file_and_no_link_is_followed(tmp_path):
    """A full disk (here a file size limit: the same EFBIG-like OSError) fails the redraw, which
    the board turns into a warning: no partial file stays, and the files due still go."""
    folder = tmp_path / "pictures"
    events.write_replacing(folder, {"p": PNG}, 0)
    old = time.time() - 2 * events.REPLACED_GRACE_S
    events.write_replacing(folder, {"p": PNG}, 1)
    first, second = our_event_files(folder)
    os.utime(first, (old - 1, old - 1))
    os.utime(second, (old, old))
    script = """
import resource, signal, sys
from pathlib import Path
from torchtune_hp.board import events
folder, png = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (len(png) // 2, resource.RLIM_INFINITY))
try:
    events.write_replacing(folder, {"p": png}, 2)
except OSError as e:
    print("refused", e.errno)
"""
    png_file = Path(__file__).parent.parent / "docs" / "gp_importance.png"
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(png_file)], capture_output=True, text=True
    )
    assert result.stdout.startswith("refused"), result.stderr
    assert our_event_files(folder) == [second]  # no partial file; the first was due
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "linked").symlink_to(elsewhere)
    with pytest.raises(files.UnsafePath):
        events.write_replacing(tmp_path / "linked", {"p": PNG}, 0)
    assert list(elsewhere.iterdir()) == []


def test_unwarp_is_monotone_and_exact_at_observations():
    original = np.array([0.1, 0.2, 5.0, 0.15, 40.0])
    warped = np.arcsinh(original * 3)  # any increasing transform
    back = unwarp(warped, original)
    assert back(warped) == pytest.approx(original)
    grid = np.linspace(warped.min() - 1, warped.max() + 1, 200)
    assert np.all(np.diff(back(grid)) >= 0)


def test_explanation_follows_the_objective_and_draws_readable_pngs():
    """On f = (log10 lr + 2)^2 the slice's mean has its minimum near lr = 0.01."""
    space = {"lr": Float(1e-4, 1.0, log=True), "y": Float(0.0, 1.0)}
    study = Study("explain", space, sampler="gp", seed=0, logdir=None)
    study.optimize(lambda t: (math.log10(t.params["lr"]) + 2) ** 2 + 0.01 * t.params["y"], 15)
    study.ask()
    expl = study.sampler.explain()
    lr_slice = expl.slices[0]
    assert lr_slice.name == "lr" and lr_slice.log
    lowest = lr_slice.x[int(np.argmin(lr_slice.mean))]
    assert 10**-2.5 < lowest < 10**-1.5
    assert np.all(lr_slice.lower <= lr_slice.mean) and np.all(lr_slice.mean <= lr_slice.upper)
    assert expl.importance["lr"] > 0.8
    width, height = png_size(slices_png(expl, "loss", 15))
    assert width >= 600 and height >= 300
    assert png_size(importance_png(expl.importance, 15))[0] >= 300


def test_gp_slices_pass_through_the_suggestion_say_how_it_was_chosen_and_star_the_best():
    """Every slice holds the other parameters at the suggestion, so all slices cross at it
    (the same posterior mean there); the title's words follow the sampler's choice; the star
    is the best COMPLETE trial, never a pruned one with a lower last report."""
    space = {"x": Float(0.0, 1.0), "y": Float(0.0, 1.0), "z": Categorical(["a", "b"])}
    study = Study("through", space, sampler="gp", seed=3, logdir=None)
    study.add({"x": 0.5, "y": 0.5, "z": "a"}, 0.3)
    pruned = study.ask()
    study.report(pruned, -5.0, 0)  # a pruned trial's last report is lower than any value
    study.tell(pruned, state="pruned")

    def f(trial):
        p = trial.params
        return (p["x"] - 0.2) ** 2 + (p["y"] - 0.7) ** 2 + 0.1 * (p["z"] == "b")

    study.optimize(f, n_trials=12)
    hows = set()
    for _ in range(4):  # thompson_every=4: one of four suggestions is a Thompson draw
        trial = study.ask()
        expl = study.sampler.explain()
        hows.add(expl.suggested_by)
        at = []
        for view in expl.slices:
            assert view.suggestion == trial.params[view.name]
            if view.categorical:
                at.append(view.mean[[str(v) for v in view.x].index(str(view.suggestion))])
            else:  # the grid holds the suggestion's own value
                gap = np.abs(np.asarray(view.x, dtype=float) - view.suggestion)
                assert gap.min() < 1e-9
                at.append(view.mean[int(np.argmin(gap))])
            best = study.incumbent
            assert view.incumbent == best.params[view.name] and view.incumbent_value == best.value
            assert "pruned" in view.observed_kind
        assert max(at) - min(at) < 1e-6  # the same point: the same posterior
        study.tell(trial, f(trial))
    # (each may add how its hyperparameters were chosen, after a semicolon; the Thompson
    # draw which GP it came from and why, thompson_model evidence)
    firsts = {how.split(";")[0] for how in hows}
    assert "log EI maximizer" in firsts and len(firsts) == 2
    (draw,) = firsts - {"log EI maximizer"}
    assert draw.startswith("Thompson draw") and "leave-one-out log density of the trials" in draw


def test_the_same_parameters_train_to_the_same_loss(tmp_path):
    """The README's claim behind its pictures: the built-in recipe, trained twice with one
    configuration for the same number of epochs (in two studies), gives the same loss. A pruned
    trial's value is from the epoch where it stopped, so it differs from a full run's."""
    from torchtune_hp.recipes.digits_mlp import train

    params = {"lr": 0.01, "dropout": 0.1, "weight_decay": 1e-4, "width": 64, "optimizer": "adam"}
    space = {
        "lr": Float(1e-4, 0.3, log=True),
        "dropout": Float(0.0, 0.6),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "width": Int(16, 512, log=True),
        "optimizer": Categorical(["sgd", "adam", "adamw"]),
    }
    values = []
    for name in ("first", "second"):
        study = Study(name, space, logdir=tmp_path, metric="val_loss", tensorboard=False)
        study.enqueue(params)
        study.optimize(lambda trial: train(trial, max_epochs=3), n_trials=1)
        values.append((study.trial(0).value, study.trial(0).intermediate))
        study.close()
    assert values[0] == values[1]
    assert len(values[0][1]) == 3


def test_a_link_a_trial_plants_where_its_session_goes_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    study = Study("links", {"x": Float(0.0, 1.0)}, logdir=tmp_path / "logs", seed=0)

    def objective(trial):
        (study.trial_dir(trial.number) / "hparams").symlink_to(outside)
        return trial.params["x"]

    study.optimize(objective, n_trials=1)
    study.close()
    session = tmp_path / "logs" / "links" / "trial_0000" / "hparams"
    assert list(outside.iterdir()) == []
    assert session.is_dir() and not session.is_symlink()
    acc = read(session)
    assert acc.Scalars("objective/value")[-1].value == pytest.approx(study.trial(0).value)


def test_a_trial_that_breaks_its_folder_never_stops_the_study(tmp_path):
    """A board problem is a warning: the study goes on, every trial is recorded, and the study
    opens again (its missing sessions written then, where possible)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    study = Study("broken", {"x": Float(0.0, 1.0)}, logdir=tmp_path / "logs", seed=0)

    def objective(trial):
        folder = study.trial_dir(trial.number)
        if trial.number == 1:
            shutil.rmtree(folder)
            folder.write_text("not a folder any more")
        if trial.number == 2:
            shutil.rmtree(folder)
            folder.symlink_to(outside)
        return trial.params["x"]

    with pytest.warns(RuntimeWarning, match="TensorBoard output of study 'broken' skipped"):
        study.optimize(objective, n_trials=4)
    study.close()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert list(outside.iterdir()) == []  # nothing written through the link
    shutil.rmtree(tmp_path / "logs" / "broken" / "trial_0003" / "hparams")
    with pytest.warns(RuntimeWarning, match="skipped in repair_session"):
        Study("broken", {"x": Float(0.0, 1.0)}, logdir=tmp_path / "logs").close()
    assert (tmp_path / "logs" / "broken" / "trial_0003" / "hparams").is_dir()  # past 1 and 2


def test_a_damaged_event_file_is_never_cut_short(tmp_path):
    from torchtune_hp.board.foreign import strip_foreign_hparams

    path = old_experiment(tmp_path)
    with path.open("ab") as f:
        f.write(b"\x00" * 7)  # a record cut off: the loader stops before the end
    data = path.read_bytes()
    assert strip_foreign_hparams(tmp_path, recurse=False) == []
    assert path.read_bytes() == data
