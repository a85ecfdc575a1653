"""Freeze-thaw (``pruner: {name: gp, resume: true}``): a stopped trial is paused, and the
model may later run it again from where it stopped instead of starting a new configuration.
Nothing is trained twice, a Lightning trial resumes from its checkpoint, a worker process
learns where to go on from its environment, and a stop while a resumed trial runs pauses it
again rather than losing it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
from conftest import cli_cmd, read_trials, run_cli, write_yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchtune_hp import Float, Study, TrialState
from torchtune_hp.gp.stopping import GPPruner
from torchtune_hp.storage import Storage
from torchtune_hp.trial import Interruption, Origin

EPOCHS = 12


def loss(a: float, epoch: int) -> float:
    """Configurations near a = 0.8 end best but start slowest; small a plateaus high."""
    final = 0.2 + (a - 0.8) ** 2
    tau = 0.5 + 4.0 * a
    return final + (2.0 - final) * math.exp(-epoch / tau)


def curve_objective(trained: Counter):
    """An objective that goes on after ``trial.resume_from`` (its state would come from a
    checkpoint) and counts every (trial, epoch) it trains."""

    def objective(trial):
        start = trial.resume_from or 0
        for epoch in range(start + 1, EPOCHS + 1):
            trained[trial.number, epoch] += 1
            trial.report(loss(trial.params["a"], epoch), epoch)
            if epoch < EPOCHS and trial.should_prune():
                return None
        return min(trial.study.trial(trial.number).intermediate.values())

    return objective


def resumed_numbers(study: Study) -> list[int]:
    return [t.number for t in study.trials if "resumed after" in (t.note or "")]


def test_paused_trials_resume_where_they_stopped_and_nothing_is_trained_twice(tmp_path):
    trained: Counter = Counter()
    study = Study(  # a seed on which this small study resumes (two trials, with the defaults)
        "ft",
        {"a": Float(0.0, 1.0)},
        sampler="gp",
        seed=3,
        logdir=tmp_path,
        pruner="gp",
        pruner_options={"resume": True},
    )
    study.optimize(curve_objective(trained), n_trials=14)
    trials = study.trials
    assert len(trials) == 14 and study.n_finished == 14
    resumed = resumed_numbers(study)
    assert resumed, [t.note for t in trials]
    assert max(trained.values()) == 1  # no epoch of any trial trained twice
    for t in trials:  # each curve is whole: 1..k, every report from the one objective
        assert sorted(t.intermediate) == list(range(1, len(t.intermediate) + 1))
        assert {e for (n, e) in trained if n == t.number} == set(t.intermediate)
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        if t.state is TrialState.COMPLETE:
            assert len(t.intermediate) == EPOCHS
    note = next(t.note for t in trials if t.number == resumed[0])
    assert "resumed after" in note and "a new trial:" in note
    assert not any("trained from the start" in (t.note or "") for t in trials)
    assert study.best_value == pytest.approx(min(t.value for t in trials if t.value is not None))
    # the finished view holds each finished trial once, and the running ones none
    assert sorted(t.number for t in study.finished_trials) == list(range(14))
    study.close()
    # the board: one session per trial (the resumed ones too) with its whole curve
    for number in resumed:
        folder = tmp_path / "ft" / f"trial_{number:04d}"
        assert not (folder / "running").exists()
        acc = EventAccumulator(str(folder / "hparams"))
        acc.Reload()
        steps = [e.step for e in acc.Scalars("objective/value")]
        assert steps == sorted(study.trial(number).intermediate)
        decisions = EventAccumulator(str(folder / "pruner_forecast"))
        decisions.Reload()
        texts = {  # as TensorBoard's server shows them: the last event of each step
            tag: {e.step: e.tensor_proto.string_val[0].decode() for e in decisions.Tensors(tag)}
            for tag in ("forecast/decision", "forecast/resumed")
        }
        stops, resumes = texts["forecast/decision"], texts["forecast/resumed"]
        assert all(t.startswith("stopped after") for t in stops.values()), stops
        assert all(t.startswith("resumed after") for t in resumes.values()), resumes
        assert resumes and set(resumes) <= set(stops)  # resumed at the step it was stopped
        forecast_steps = [e.step for e in decisions.Scalars("forecast/p_beats_best")]
        assert len(forecast_steps) == len(set(forecast_steps))  # one forecast per step


def restarting_objective(revalidate: bool = False):
    """An objective that saves its state when told to stop (odd trials only) but on a resumed
    run trains from epoch 1 again, as a script that never loads its checkpoint does; with
    ``revalidate`` it does go on, after reporting the paused step once more."""

    def objective(trial):
        start = trial.resume_from if revalidate and trial.resume_from is not None else 1
        for epoch in range(start, EPOCHS + 1):
            trial.report(loss(trial.params["a"], epoch), epoch)
            if epoch < EPOCHS and trial.should_prune():
                if trial.number % 2 or revalidate:
                    trial.checkpoint_path.write_text(str(epoch))
                return None
        return min(trial.study.trial(trial.number).intermediate.values())

    return objective


def resuming_study(logdir: Path, name: str) -> Study:
    """A study whose pruner (extreme options) stops trials at every rung from the second
    report on and resumes them whenever it can."""
    pruner = GPPruner(
        resume=True, resume_ratio=1e-9, threshold=0.0, gain_ratio=1e9, n_startup=1, min_resource=2
    )
    return Study(
        name, {"a": Float(0.0, 1.0)}, sampler="random", seed=1, logdir=logdir, pruner=pruner
    )


def test_a_resumed_trial_that_trains_from_the_start_says_so(tmp_path):
    study = resuming_study(tmp_path, "over")
    with pytest.warns(RuntimeWarning, match="trained from the start") as caught:
        study.optimize(restarting_objective(), n_trials=6)
    resumed = resumed_numbers(study)
    assert {n % 2 for n in resumed} == {0, 1}, resumed  # with a checkpoint and without
    for number in resumed:
        note = study.trial(number).note
        assert "it reported its earlier steps again: it trained from the start" in note, note
        checkpoint = tmp_path / "over" / f"trial_{number:04d}" / "pause.ckpt"
        why = (
            f"its {checkpoint} is there: does the objective pass trial.ckpt_path"
            if number % 2
            else f"no {checkpoint} was found"
        )
        assert why in note, note
    told = [str(w.message) for w in caught if "trained from the start" in str(w.message)]
    assert len(told) == len(set(told))  # once per resume, not once per step
    assert {int(m.split(":")[0].removeprefix("trial ")) for m in told} == set(resumed)
    # stopped again at the rung it was resumed at, each would be resumed and stopped forever
    # (the old code ran this study until the test's timeout): it stays paused instead
    again = [t for t in study.trials if "it is not resumed again" in (t.note or "")]
    assert again and all(t.state is TrialState.PRUNED for t in again)
    assert len(study.trials) == 6 and study.n_finished == 6
    # a paused trial is recorded where its saved state is: the run that trained from the
    # start replaced its curve, the earlier run's later steps with it (they stayed, and the
    # next run resumed it at a step its checkpoint had never reached)
    for t in study.trials:
        checkpoint = tmp_path / "over" / f"trial_{t.number:04d}" / "pause.ckpt"
        if t.state is TrialState.PRUNED and t.number in resumed and checkpoint.is_file():
            assert max(t.intermediate) == int(checkpoint.read_text()), (t.number, t.note)
    study.close()


def test_a_resumed_trial_that_validates_its_paused_step_again_is_not_said_to_start_over(
    tmp_path,
):
    study = resuming_study(tmp_path, "again")
    study.optimize(restarting_objective(revalidate=True), n_trials=6)
    assert resumed_numbers(study)
    notes = " ".join(t.note or "" for t in study.trials)
    assert "trained from the start" not in notes
    assert "a step was reported more than once" in notes
    study.close()


def test_a_resumed_run_that_fails_leaves_its_trial_paused_as_it_was(tmp_path):
    """A paused trial whose resumed run fails (its checkpoint no longer loads into the
    changed model, an out-of-memory) was recorded FAILED with no value: its curve was lost
    and the sampler took a decent configuration for the worst. It stays paused with its
    curve up to the pause, the error in its note, and is not resumed again in this run."""
    first = resuming_study(tmp_path, "fr")
    first.optimize(restarting_objective(revalidate=True), n_trials=4)
    paused = {t.number: t for t in first.trials if t.state is TrialState.PRUNED}
    first.close()
    assert paused

    def broken(trial):
        if trial.resume_from is not None:
            trial.report(9.0, trial.resume_from + 1)  # a report, then the failure
            raise RuntimeError("Missing key(s) in state_dict: 'layer2.weight'")
        return restarting_objective(revalidate=True)(trial)

    second = resuming_study(tmp_path, "fr")
    with pytest.warns(RuntimeWarning, match=r"its resumed run failed \(RuntimeError: Missing"):
        second.optimize(broken, n_trials=8)
    failed_resumes = [
        t
        for t in second.trials
        if "its resumed run failed (RuntimeError" in (t.note or "") and t.number in paused
    ]
    assert failed_resumes
    for t in failed_resumes:
        before = paused[t.number]
        assert t.state is TrialState.PRUNED
        assert t.intermediate == before.intermediate and t.value == before.value
        assert "Traceback" in t.note and t.note.splitlines()[-1].endswith(
            "is not resumed again in this run"
        )
        assert t.note.count("resumed after") == before.note.count("resumed after") + 1
    second.close()


def test_without_resume_a_stopped_trial_stays_stopped(tmp_path):
    trained: Counter = Counter()
    study = Study("once", {"a": Float(0.0, 1.0)}, sampler="gp", seed=0, logdir=None, pruner="gp")
    study.optimize(curve_objective(trained), n_trials=14)
    assert not resumed_numbers(study)
    assert any(t.state is TrialState.PRUNED for t in study.trials)


def test_resume_choice_prefers_the_paused_trial_with_most_gain_per_remaining_epoch():
    from test_gp_pruner import HISTORY, SPACE
    from test_gp_pruner import trial as frozen

    pruner = GPPruner(resume=True)
    pruner.bind(SPACE, "min")
    # a slow starter near the optimum, paused after 2 epochs, and a plateau paused after 2
    slow, flat = frozen(20, 0.8, 2, TrialState.PRUNED), frozen(21, 0.05, 2, TrialState.PRUNED)
    choice = pruner.resume_choice([*HISTORY, slow, flat])
    assert choice is not None and choice.resumed and choice.forecast.number == 20
    assert choice.rate >= choice.new_rate
    assert choice.describe("val_loss").startswith("resumed after 2 reports: predicted final")
    # only the plateau paused: a new configuration is worth more
    assert pruner.resume_choice([*HISTORY, flat]) is None
    # a trial that diverged, or one the study never paused, is never resumed
    diverged = frozen(22, 0.8, 2, TrialState.PRUNED)
    diverged.intermediate[2] = math.inf
    assert pruner.resume_choice([*HISTORY, diverged]) is None
    assert GPPruner().resume_choice([*HISTORY, slow]) is None  # resume is off by default
    with pytest.raises(ValueError, match="resume_ratio"):
        GPPruner(resume_ratio=0.0)


def resumed_after_two_reports(storage: Storage) -> int:
    """A trial that reported at steps 1 and 2, was paused there and now runs again."""
    number = storage.create_trial({"a": 0.5}, Origin.SAMPLER)
    for step in (1, 2):
        storage.report(number, step, 1.0 / step)
    assert storage.finish_trial(number, TrialState.PRUNED, 0.5)
    assert storage.reopen_trial(number, "resumed after 2 reports")
    return number


def test_a_stop_while_a_resumed_trial_runs_pauses_it_again(tmp_path):
    storage = Storage(tmp_path / "study.db")
    number = resumed_after_two_reports(storage)
    assert not storage.reopen_trial(number, "twice")  # only a PRUNED trial reopens
    storage.report(number, 3, 0.25)
    fresh = storage.create_trial({"a": 0.1}, Origin.SAMPLER)  # a first run, also running
    assert sorted(storage.recover_running("interrupted by the user", Interruption.STOPPED)) == [
        number,
        fresh,
    ]
    # paused again where it had paused: its script saved its state there (when told to pause),
    # not at step 3, so resuming after step 3 would go on from step 2's state
    paused = storage.trial(number)
    assert paused.state is TrialState.PRUNED and paused.value == 0.5
    assert paused.intermediate == {1: 1.0, 2: 0.5} and paused.counts
    assert (
        "paused again: interrupted by the user; its 1 report(s) after step 2, where its state "
        "was saved, were dropped" in (paused.note or "")
    )
    assert storage.trial(fresh).state is TrialState.FAILED
    assert storage.queued() == [{"a": 0.1}]  # the first run is queued, the paused one not
    storage.close()


def test_a_stop_after_a_resumed_trial_was_told_to_pause_keeps_its_reports(tmp_path):
    """Told to pause again at step 4, the trial saved its state there; a stop before its
    process ended must pause it at 4, not roll it back to its earlier pause at 2 (the next
    resume would then read a step-4 checkpoint with resume_from=2)."""
    storage = Storage(tmp_path / "study.db")
    number = resumed_after_two_reports(storage)
    for step in (3, 4):
        storage.report(number, step, 1.0 / step)
    storage.told_to_pause(number, 4)
    storage.recover_running("interrupted by the user", Interruption.STOPPED)
    paused = storage.trial(number)
    assert paused.state is TrialState.PRUNED and sorted(paused.intermediate) == [1, 2, 3, 4]
    assert "dropped" not in (paused.note or "")
    storage.close()


@pytest.mark.parametrize("saved", [False, True], ids=["died before the save", "after it"])
def test_a_driver_that_dies_while_a_trial_saves_its_pause_keeps_the_step_its_state_is_at(
    tmp_path, saved
):
    """Told to pause again at step 4, a function or Lightning trial saves its state only then,
    which takes a while: a driver killed (or stopped) in that window recorded the pause at 4
    while pause.ckpt still held step 2, and the next resume went on from step 2's weights as
    step 5. The pause stands at 4 only where pause.ckpt was written after the verdict."""
    space = {"a": Float(0.0, 1.0)}
    study = Study("ft", space, logdir=tmp_path, tensorboard=False)
    trial = study.ask()
    for step in (1, 2):
        study.report(trial, 1.0 / step, step)
    trial.checkpoint_path.write_text("2")  # saved when it paused at step 2
    study.tell(trial, state="pruned")
    study.close()
    storage = Storage(tmp_path / "ft" / "study.db")  # a driver that resumed it, then died
    assert storage.reopen_trial(0, "resumed after 2 reports")
    for step in (3, 4):
        storage.report(0, step, 1.0 / step)
    storage.told_to_pause(0, 4, since=time.time())
    storage.close()
    if saved:
        time.sleep(0.01)
        (tmp_path / "ft" / "trial_0000" / "pause.ckpt").write_text("4")
    with pytest.warns(UserWarning, match="paused again"):
        study = Study("ft", space, logdir=tmp_path, tensorboard=False)
    (again,) = study.trials
    assert again.state is TrialState.PRUNED
    assert sorted(again.intermediate) == ([1, 2, 3, 4] if saved else [1, 2])
    assert (
        "2 report(s) after step 2, where its state was saved, were dropped" in again.note
    ) != saved
    study.close()


def test_a_dead_driver_pauses_a_resumed_trial_again_without_promising_a_retry(tmp_path):
    """A driver that died while a paused trial ran again: the next one pauses it again, and
    neither its warning nor the trial's note says it was marked FAILED or will be retried."""
    space = {"a": Float(0.0, 1.0)}
    study = Study("ft", space, logdir=tmp_path, tensorboard=False)
    trial = study.ask()
    study.report(trial, 1.0, 0)
    study.tell(trial, state="pruned")
    study.close()
    storage = Storage(tmp_path / "ft" / "study.db")
    assert storage.reopen_trial(0, "resumed after 1 report")  # as a driver that then died
    storage.close()
    with pytest.warns(UserWarning, match=r"\[0\] paused again \(they ran after a pause\)"):
        study = Study("ft", space, logdir=tmp_path, tensorboard=False)
    (again,) = study.trials
    assert again.state is TrialState.PRUNED and again.intermediate == {0: 1.0}
    assert "paused again" in (again.note or "") and "retried" not in (again.note or "")
    study.close()


def test_a_resumed_trial_s_seconds_leave_out_its_pause(tmp_path):
    """Paused 1.5 s, run again 0.3 s, then its driver dies and the next finds it a second
    later: its duration is its two runs, the pause and the downtime kept out of it."""
    space = {"a": Float(0.0, 1.0)}
    study = Study("ft", space, logdir=tmp_path, tensorboard=False)
    trial = study.ask()
    study.report(trial, 1.0, 0)
    first_run = study.tell(trial, state="pruned").duration_s
    study.close()
    time.sleep(1.5)
    storage = Storage(tmp_path / "ft" / "study.db")
    assert storage.reopen_trial(0, "resumed after 1 report")
    time.sleep(0.3)
    storage.report(0, 1, 0.5)
    storage.close()
    time.sleep(1.0)
    with pytest.warns(UserWarning, match="paused again"):
        study = Study("ft", space, logdir=tmp_path, tensorboard=False)
    (again,) = study.trials
    assert again.state is TrialState.PRUNED and again.resumes == ["resumed after 1 report"]
    assert again.paused_s >= 1.5
    assert (again.end - again.start).total_seconds() >= 1.8  # the wall clock holds the pause
    assert 0.3 <= again.duration_s <= first_run + 0.3 + 0.4
    study.close()


class ResumeTheFirstPaused:
    """A pruner that stops every trial at its first report and always runs the first paused
    trial again: two resumes of one trial at one step, as a stop between them makes."""

    name = "resume_first"

    def prune(self, trial, others, mode):
        return True

    def resume_choice(self, trials, skip=()):
        from torchtune_hp.gp.curves import FinalPrediction
        from torchtune_hp.gp.stopping import Decision

        paused = [t for t in trials if t.state is TrialState.PRUNED and t.number not in skip]
        if not paused:
            return None
        t = paused[0]
        forecast = FinalPrediction(t.number, len(t.intermediate), 0.5, 0.1, 0.4, 0.6, 0.1)
        return Decision(forecast, stop=False, resumed=True)


def test_a_second_resume_at_one_step_keeps_the_first_in_view(tmp_path):
    import io

    from rich.console import Console

    from torchtune_hp.progress import ProgressView

    space = {"a": Float(0.0, 1.0)}
    with Study("twice", space, logdir=tmp_path, pruner=ResumeTheFirstPaused()) as study:
        trial = study.ask()
        study.report(trial, 1.0, 0)
        study.tell(trial, state="pruned")
        assert study.ask().number == 0  # resumed; then stopped before it reports
    with Study("twice", space, logdir=tmp_path, pruner=ResumeTheFirstPaused()) as study:
        out = io.StringIO()
        with ProgressView(study, 1, Console(file=out, width=300)):
            trial = study.ask()
            assert trial.number == 0 and trial.resume_from == 0  # the same step again
            study.tell(trial, 0.4)
    assert len(study.trial(0).resumes) == 2
    # the progress line says why the count did not move
    assert "[1/1] trial 0 COMPLETE (resumed; counted when it paused) 0.4" in out.getvalue()
    # while a paused trial runs again, the count of trials done does not move back
    with Study("busy", space, logdir=tmp_path, pruner=ResumeTheFirstPaused()) as busy:
        out = io.StringIO()
        with ProgressView(busy, 3, Console(file=out, width=300)):
            first = busy.ask()
            busy.report(first, 1.0, 0)
            busy.tell(first, state="pruned")
            again = busy.ask()
            assert again.number == 0 and again.resume_from == 0
            busy.tell(busy.ask(), 0.3)  # a new trial ends while trial 0 runs again
            busy.tell(again, 0.2)
    lines = [line.split(" (")[0] for line in out.getvalue().splitlines() if "] trial" in line]
    expected = ["[1/3] trial 0 PRUNED 1", "[2/3] trial 1 COMPLETE 0.3", "[2/3] trial 0 COMPLETE"]
    assert lines == expected
    # and TensorBoard's best so far is not drawn back: trial 0's end after its resume wrote
    # its best at step 0, after step 1's (none at its pause: nothing had completed); it goes
    # at the latest trial's step
    best = EventAccumulator(str(tmp_path / "busy" / "study"))
    best.Reload()
    points = [(e.step, round(e.value, 4)) for e in best.Scalars("study/best_value")]
    assert points == [(1, 0.3), (1, 0.2)], points
    decisions = EventAccumulator(str(tmp_path / "twice" / "trial_0000" / "pruner_forecast"))
    decisions.Reload()
    shown = {
        e.step: e.tensor_proto.string_val[0].decode() for e in decisions.Tensors("forecast/resumed")
    }  # as TensorBoard shows it: the last event of each step
    assert list(shown) == [0]
    assert shown[0].startswith("resume 1: resumed after") and "\n\nresume 2: resumed" in shown[0]


def lightning_objective(runs: list, max_epochs: int = 6, callbacks=lambda trial: []):
    """A real Trainer that resumes from ``trial.ckpt_path`` and records the epochs it trains;
    ``callbacks(trial)``: the user's own, beside it."""
    import lightning as L
    from tiny_model import Tiny, loaders

    import torchtune_hp as hp

    class Seen(L.Callback):
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def on_train_epoch_start(self, trainer, module) -> None:
            self.epochs.append(trainer.current_epoch)

    def objective(trial):
        seen, mine = Seen(), callbacks(trial)
        trainer = L.Trainer(
            max_epochs=max_epochs,
            logger=False,
            enable_checkpointing=bool(mine),
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[hp.TuneCallback(trial, monitor="val_loss"), seen, *mine],
        )
        train, val = loaders()
        trainer.fit(Tiny(trial.params["lr"]), train, val, ckpt_path=trial.ckpt_path)
        runs.append((trial.number, trial.resume_from, trial.ckpt_path, seen.epochs))
        return trainer.callback_metrics["val_loss"]

    return objective


def test_a_lightning_trial_resumes_from_its_pause_checkpoint(tmp_path):
    """A real Trainer: the callback saves ``pause.ckpt`` when the trial stops, and the resumed
    run (``ckpt_path=trial.ckpt_path``) trains only the epochs after it. Extreme options make
    the real pruner stop at every rung and resume whenever it can."""
    runs: list = []
    pruner = GPPruner(resume=True, resume_ratio=1e-9, threshold=0.0, gain_ratio=1e9, n_startup=1)
    study = Study(
        "lit",
        {"lr": Float(1e-3, 1e-1, log=True)},
        sampler="random",
        seed=1,
        logdir=tmp_path,
        pruner=pruner,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="pruner gp could not forecast")
        study.optimize(lightning_objective(runs), n_trials=5)
    again = [r for r in runs if r[1] is not None]
    assert again, runs
    for number, resume_from, ckpt, epochs in again:
        assert ckpt == str(tmp_path / "lit" / f"trial_{number:04d}" / "pause.ckpt")
        assert epochs and epochs[0] == resume_from + 1  # Lightning went on after the pause
    by_trial: dict[int, list[int]] = {}
    for number, _, _, epochs in runs:
        by_trial.setdefault(number, []).extend(epochs)
    for number, epochs in by_trial.items():  # no epoch trained twice, reports whole
        assert len(epochs) == len(set(epochs))
        assert sorted(study.trial(number).intermediate) == sorted(epochs)
    # the model decided inside Lightning's validation loop (which runs under inference
    # mode): a stop with a forecast, not a warning that it could not forecast
    assert any("predicted final" in (t.note or "") for t in study.trials)
    study.close()


def test_the_pause_checkpoint_holds_the_users_callbacks_after_the_paused_validation(tmp_path):
    """``pause.ckpt`` was saved inside the TuneCallback's on_validation_end, before Lightning
    ran the user's ModelCheckpoint (always last) and EarlyStopping: resumed, they knew one
    validation fewer (a ModelCheckpoint's file of the paused epoch was never cleaned up)."""
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    def users(trial):
        folder = tmp_path / "mine" / str(trial.number)
        keep = ModelCheckpoint(dirpath=folder, monitor="val_loss", save_top_k=-1)
        return [keep, EarlyStopping(monitor="val_loss", patience=100)]

    runs: list = []
    pruner = GPPruner(resume=True, resume_ratio=1e-9, threshold=0.0, gain_ratio=1e9, n_startup=1)
    space = {"lr": Float(1e-3, 1e-1, log=True)}
    study = Study("lit", space, sampler="random", seed=1, logdir=tmp_path, pruner=pruner)
    study.optimize(lightning_objective(runs, callbacks=users), n_trials=4)
    study.close()
    paused = sorted((tmp_path / "lit").glob("trial_*/pause.ckpt"))
    assert paused and any(r[1] is not None for r in runs)  # and some were resumed
    # resumed, each went on after its pause (it began inside the paused epoch, where the
    # EarlyStopping found no val_loss and the resumed run failed)
    assert not any("resumed run failed" in (t.note or "") for t in study.trials)
    for path in paused:
        state = torch.load(path, weights_only=False)
        done, kept = state["epoch"], state["callbacks"]  # the epochs trained, the paused one too
        (checkpoints,) = (v for k, v in kept.items() if k.startswith("ModelCheckpoint"))
        (stopping,) = (v for k, v in kept.items() if k.startswith("EarlyStopping"))
        number = int(path.parent.name.split("_")[1])
        seen = [v for s, v in sorted(study.trial(number).intermediate.items()) if s < done]
        assert len(checkpoints["best_k_models"]) == done == len(seen)
        assert float(stopping["best_score"]) == pytest.approx(min(seen))


SCRIPT = """
import json, os, sys
import torchtune_hp
trial = torchtune_hp.current_trial()
a = float(sys.argv[1])
start = trial.resume_from or 0
if start:
    state = json.loads(open(trial.checkpoint_path).read())
    assert state["epoch"] == start, state
print("start", start, "pauses", trial.pauses, flush=True)
for epoch in range(start + 1, {epochs} + 1):
    final = 0.2 + (a - 0.8) ** 2
    value = final + (2.0 - final) * 2.718281828 ** (-epoch / (0.5 + 4.0 * a))
    if torchtune_hp.report(val_loss=value, step=epoch) and epoch < {epochs}:
        with open(trial.checkpoint_path, "w") as f:
            f.write(json.dumps({{"epoch": epoch}}))
        break
"""


STEPLESS_SCRIPT = """
import json, os, sys, time
import torchtune_hp
trial = torchtune_hp.current_trial()
a, how = float(sys.argv[1]), sys.argv[2]
start = 0 if trial.resume_from is None else trial.resume_from + 1
if start:
    state = json.loads(open(trial.checkpoint_path).read())
    assert state["epoch"] >= trial.resume_from, (state, trial.resume_from)
print("start", start, "pauses", trial.pauses, flush=True)
for epoch in range(start, {epochs}):
    final = 0.2 + (a - 0.8) ** 2
    value = final + (2.0 - final) * 2.718281828 ** (-(epoch + 1) / (0.5 + 4.0 * a))
    part = str(trial.checkpoint_path) + ".part"  # saved every epoch, whole: a regex script
    with open(part, "w") as f:  # hears no verdict, it is stopped at once, at any point
        f.write(json.dumps({{"epoch": epoch}}))
    os.replace(part, trial.checkpoint_path)
    if how == "regex":
        print(f"valid loss {{value:.6f}}", flush=True)
        time.sleep(float(os.environ.get("RESUMED_EPOCH_S", 0.1)) if start else 0.1)
    elif torchtune_hp.report(val_loss=value):  # no step: the next one
        break
"""


def resume_project(
    home: Path, trials: int, executor: dict, script: str = SCRIPT, args: tuple = (), **objective
) -> None:
    """A user's folder: ``train.py`` (the script above) beside ``ft.yaml``, whose pruner
    resumes whenever a paused trial exists (the tests are about the plumbing, and with two
    workers the model's choices depend on which trial reports first): ``resume_ratio`` near
    0, and ``threshold: 0`` so no paused trial is too hopeless to resume (with the default
    0.05 a two-worker run once paused only trials at P(beats best) = 0.02 and resumed none)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "train.py").write_text(script.format(epochs=EPOCHS))
    write_yaml(
        home / "ft.yaml",
        {
            "study": {"name": "ft", "metric": "val_loss", "trials": trials, "seed": 0},
            "space": {"a": {"type": "float", "low": 0.0, "high": 1.0}},
            "sampler": {"name": "gp"},
            "pruner": {
                "name": "gp",
                "resume": True,
                "resume_ratio": 1e-9,
                "threshold": 0.0,
                "n_startup": 1,
            },
            "objective": {"command": ["python", "train.py", "{a}", *args], **objective},
            "executor": executor,
            "logdir": "logs",
        },
    )


def check_resumed(study_dir: Path, trials: int, first: int = 1) -> None:
    """Some trials ran again, each from the state its own earlier run saved (the script fails
    otherwise), with its earlier output kept and its curve whole."""
    rows = read_trials(study_dir)
    assert len(rows) == trials
    assert all(t.state is not TrialState.FAILED for t in rows), [t.error for t in rows]
    resumed = [t for t in rows if "resumed after" in (t.note or "")]
    assert resumed, [t.note for t in rows]
    for t in resumed:
        folder = study_dir / f"trial_{t.number:04d}"
        outs = sorted(p.name for p in folder.iterdir() if p.name.startswith("stdout.log"))
        assert len(outs) >= 2  # the earlier run's output kept beside the last one's
        last = (folder / "stdout.log").read_text()
        assert "pauses True" in last and "start 0 " not in last
        assert sorted(t.intermediate) == list(range(first, len(t.intermediate) + first))


def test_a_lightning_cli_script_resumes_from_its_pause_checkpoint(tmp_path):
    """``args: lightning_cli``: the script cannot pass ``ckpt_path=trial.ckpt_path``, and a
    resumed trial trained from epoch 0 again under its name. Its ``fit`` gets
    ``--ckpt_path`` to the checkpoint the callback saved, and Lightning goes on after it."""
    script = Path(__file__).parent / "scripts" / "cli_tiny.py"
    command = [
        "python",
        str(script),
        "fit",
        "--trainer.max_epochs=8",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=false",
    ]
    write_yaml(
        tmp_path / "cli.yaml",
        {
            "study": {"name": "cli", "metric": "val_loss", "trials": 5, "seed": 1},
            "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
            "sampler": {"name": "random"},
            "pruner": {
                "name": "gp",
                "resume": True,
                "resume_ratio": 1e-9,
                "threshold": 0.0,
                "gain_ratio": 1e9,
                "n_startup": 1,
            },
            "objective": {"command": command, "args": "lightning_cli"},
            "logdir": "logs",
        },
    )
    proc = run_cli("run", "cli.yaml", cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study_dir = tmp_path / "logs" / "cli"
    resumed = [t for t in read_trials(study_dir) if t.resumes]
    assert resumed, [t.note for t in read_trials(study_dir)]
    for t in resumed:
        folder = study_dir / f"trial_{t.number:04d}"
        said = (folder / "stderr.log").read_text()
        assert f"Restoring states from the checkpoint path at {folder / 'pause.ckpt'}" in said
        # each epoch reported once over the trial's runs: the resumed run went on after its
        # pause (run from epoch 0 again, it reported the first epochs a second time)
        lines = (folder / "report.jsonl").read_text().splitlines()
        steps = [json.loads(line)["step"] for line in lines]
        assert len(steps) == len(set(steps)) and min(steps) == 0, steps
        assert sorted(t.intermediate) == sorted(steps)


def test_scripts_in_two_workers_resume_from_their_own_checkpoint(tmp_path):
    """The CLI, a recipe with a relative logdir, two worker processes: a resumed script
    learns its last step from its environment and reads the state it saved."""
    resume_project(tmp_path, 12, {"workers": 2})
    proc = run_cli("run", "ft.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_resumed(tmp_path / "logs" / "ft", 12)


@pytest.mark.parametrize("how", ["report", "regex"])
def test_a_resumed_script_that_gives_no_steps_goes_on_from_its_last_report(tmp_path, how):
    """``report()`` without a step, or a ``metric_regex`` match, counted from 0 again in the
    resumed process: its reports replaced the trial's first ones, the trial never got past
    its rung, and the study paused and resumed it for ever. They go on from the trial's
    last report."""
    regex = {"metric_regex": r"valid loss (?P<value>[0-9.]+)"} if how == "regex" else {}
    resume_project(tmp_path, 8, {"workers": 1}, STEPLESS_SCRIPT, (how,), **regex)
    proc = run_cli("run", "ft.yaml", cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_resumed(tmp_path / "logs" / "ft", 8, first=0)


def test_a_stop_while_a_resumed_regex_script_runs_keeps_every_line_it_printed(tmp_path):
    """A script read by ``metric_regex`` hears no verdict and saves its state every epoch.
    Stopped (SIGTERM to the driver) while it ran again after a pause, its reports since the
    pause were dropped, as for a script that saves only when told to, while its checkpoint
    was epochs further on: the next run labelled its epochs shifted (or trained them twice).
    Every line it printed is kept, and the next run goes on after the last."""
    regex = {"metric_regex": r"valid loss (?P<value>[0-9.]+)"}
    resume_project(tmp_path, 8, {"workers": 1}, STEPLESS_SCRIPT, ("regex",), **regex)
    slow = {**os.environ, "RESUMED_EPOCH_S": "0.5"}  # a resumed run lasts past the signal
    with open(tmp_path / "driver.err", "w") as err:  # read after: a pipe could fill
        driver = subprocess.Popen(cli_cmd("run", "ft.yaml"), cwd=tmp_path, stderr=err, env=slow)
    study_dir = tmp_path / "logs" / "ft"
    deadline = time.monotonic() + 180
    stopped_at = None
    while stopped_at is None:  # a trial that runs again and has printed 2 lines since
        assert driver.poll() is None and time.monotonic() < deadline, "no trial resumed"
        time.sleep(0.05)
        try:  # the driver may have made the file and not yet the study in it
            trials = read_trials(study_dir)
        except FileNotFoundError:
            continue
        for t in trials:
            note = t.note or ""
            if t.state is TrialState.RUNNING and "resumed after" in note:
                paused = int(note.split("resumed after ")[-1].split(" ")[0])
                if len(t.intermediate) >= paused + 2:
                    stopped_at = t.number
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=60) == 143, (tmp_path / "driver.err").read_text()[-3000:]
    again = next(t for t in read_trials(study_dir) if t.number == stopped_at)
    assert again.state is TrialState.PRUNED and "paused again" in (again.note or "")
    assert "dropped" not in (again.note or "")  # what it printed is what it saved
    proc = run_cli("run", "ft.yaml", cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_resumed(study_dir, 8, first=0)
    for t in read_trials(study_dir):  # each step holds its own epoch's value: none shifted
        for step, value in t.intermediate.items():
            assert value == pytest.approx(loss(t.params["a"], step + 1), abs=2e-6), (t, step)
