"""TensorBoard output read back from real event files, and from a real TensorBoard server."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
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

from torchtune_hp import Categorical, Float, Int, Study, TrialState, TuneCallback
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


def test_one_session_per_trial_with_params_state_and_final_objective(study_dir):
    trials = stored_trials(study_dir)
    states = [t.state for t in trials]
    assert len(trials) == 9 and states[:4] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.FAILED,
        TrialState.PRUNED,
    ]
    runs = sorted(p for p in study_dir.iterdir() if p.is_dir())
    assert [p.name for p in runs] == [f"trial_{t.number:04d}" for t in trials]
    for t, run in zip(trials, runs, strict=True):
        assert not [p for p in run.iterdir() if p.is_dir()]  # no version_0 or timestamped runs
        acc = read(run)
        start = session_of(acc, metadata.SESSION_START_INFO_TAG)
        assert start.group_name == run.name
        assert start.hparams["lr"].number_value == pytest.approx(t.params["lr"], rel=1e-12)
        end = session_of(acc, metadata.SESSION_END_INFO_TAG)
        expected = (
            api_pb2.STATUS_FAILURE if t.state is TrialState.FAILED else api_pb2.STATUS_SUCCESS
        )
        assert end.status == expected
        scalars = acc.Tags()["scalars"]
        assert "hp_metric" not in scalars
        assert acc.Scalars("trial/pruned")[-1].value == float(t.state is TrialState.PRUNED)
        if t.state is TrialState.FAILED:
            assert "trial/val_loss" not in scalars
            continue
        # the HParams metric: the last event of trial/val_loss is the value in the database
        series = acc.Scalars("trial/val_loss")
        assert series[-1].value == pytest.approx(t.value, rel=1e-6)
        assert [e.step for e in series] == sorted(e.step for e in series)
        # Lightning's own curves, in the same run folder
        assert len(acc.Scalars("val_loss")) == len(t.intermediate)
        if t.state is TrialState.PRUNED:
            assert len(t.intermediate) < EPOCHS


def test_study_run_has_experiment_best_so_far_and_gp_pictures(study_dir):
    acc = read(study_dir)
    experiment = metadata.parse_experiment_plugin_data(
        acc.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    )
    (lr,) = experiment.hparam_infos
    assert (lr.name, lr.display_name) == ("lr", "lr (log)")
    assert (lr.domain_interval.min_value, lr.domain_interval.max_value) == (1e-4, 0.5)
    assert [m.name.tag for m in experiment.metric_infos] == ["trial/val_loss", "trial/pruned"]
    best = acc.Scalars("study/best_val_loss")
    values = [e.value for e in best]
    assert values == sorted(values, reverse=True)  # best so far: never worse
    assert [e.step for e in best] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    complete = [t for t in stored_trials(study_dir) if t.state is TrialState.COMPLETE]
    objective = acc.Scalars("study/val_loss")  # the COMPLETE trials (not failed/pruned)
    assert [(e.step, e.value) for e in objective] == [
        (t.number, pytest.approx(t.value, rel=1e-6)) for t in complete
    ]
    images = acc.Images("gp/slices")
    assert images and all(e.step % 2 == 0 and e.step >= 4 for e in images)
    first = images[0]
    assert first.encoded_image_string[:4] == b"\x89PNG" and first.width > 300
    assert acc.Images("gp/importance")


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


@pytest.mark.slow
def test_tensorboard_server_hparams_plugin_lists_one_session_per_trial(study_dir):
    """What the HParams dashboard shows, asked of a real TensorBoard over HTTP."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(study_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}/data/plugin/hparams"
        request = {
            "experimentName": "",
            "allowedStatuses": [
                "STATUS_UNKNOWN",
                "STATUS_SUCCESS",
                "STATUS_FAILURE",
                "STATUS_RUNNING",
            ],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        }
        deadline, groups = time.monotonic() + 90, []
        while time.monotonic() < deadline:
            try:
                groups = post(f"{base}/session_groups", request).get("sessionGroups", [])
            except OSError:  # not listening yet
                groups = []
            if len(groups) == 9 and all(g["sessions"][0].get("endTimeSecs") for g in groups):
                break
            time.sleep(0.5)
        trials = {f"trial_{t.number:04d}": t for t in stored_trials(study_dir)}
        assert sorted(g["name"] for g in groups) == sorted(trials)
        for g in groups:
            t = trials[g["name"]]
            assert g["hparams"]["lr"] == pytest.approx(t.params["lr"])
            metrics = {m["name"]["tag"]: m["value"] for m in g["metricValues"]}
            if t.state is TrialState.FAILED:
                assert "trial/val_loss" not in metrics
                assert g["sessions"][0]["status"] == "STATUS_FAILURE"
            else:
                assert metrics["trial/val_loss"] == pytest.approx(t.value, rel=1e-6)
            assert metrics["trial/pruned"] == float(t.state is TrialState.PRUNED)
        experiment = post(f"{base}/experiment", {"experimentName": ""})
        assert [h["name"] for h in experiment["hparamInfos"]] == ["lr"]
    finally:
        server.kill()
        server.wait(timeout=10)
    assert server.poll() is not None


def test_interrupted_trial_session_ends_failed(tmp_path):
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
    acc = read(tmp_path / "ctrl_c" / "trial_0001")
    assert session_of(acc, metadata.SESSION_END_INFO_TAG).status == api_pb2.STATUS_FAILURE
    # trial 0 reported 0.5 at step 0, then returned x: the return value is written last
    acc0 = read(tmp_path / "ctrl_c" / "trial_0000")
    series = acc0.Scalars("trial/value")
    assert [e.step for e in series] == [0, 1]
    assert series[-1].value == pytest.approx(stored_trials(tmp_path / "ctrl_c")[0].value)


def test_mixed_space_columns_and_pictures(tmp_path):
    space = {
        "lr": Float(1e-4, 1.0, log=True),
        "width": Int(8, 256, log=True),
        "act": Categorical(["relu", "gelu", 1]),  # mixed choices: shown as strings
        "flag": Categorical([True, False]),
    }
    study = Study("mixed", space, sampler="gp", seed=0, logdir=tmp_path, images_every=1)

    def objective(trial):
        p = trial.params
        return (math.log10(p["lr"]) + 2) ** 2 + 0.01 * p["width"] + (p["act"] == "gelu")

    study.optimize(objective, n_trials=12)
    study.close()
    acc = read(tmp_path / "mixed")
    experiment = metadata.parse_experiment_plugin_data(
        acc.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    )
    infos = {h.name: h for h in experiment.hparam_infos}
    assert infos["act"].type == api_pb2.DATA_TYPE_STRING
    assert [v.string_value for v in infos["act"].domain_discrete.values] == ["relu", "gelu", "1"]
    assert infos["flag"].type == api_pb2.DATA_TYPE_BOOL
    assert infos["width"].display_name == "width (log)"
    assert len(acc.Images("gp/slices")) >= 1


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
