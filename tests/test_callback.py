"""TuneCallback with a real Lightning Trainer on a tiny regression task."""

import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_model import Tiny, loaders

from torchtune_hp import Float, Study, TrialState, TuneCallback
from torchtune_hp.storage import Storage

SCRIPTS = Path(__file__).parent / "scripts"


def fit(trial, epochs=6, trainer_options=None, before=(), stream=False, **cb):
    """``trainer_options`` over the defaults; ``before``: callbacks that run before ours;
    ``stream``: the training set as a stream without a length (see Endless)."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    callback = TuneCallback(trial, **cb)
    options = {
        "max_epochs": epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 2,
        "accelerator": "cpu",
        **(trainer_options or {}),
    }
    trainer = L.Trainer(**options)
    trainer.callbacks.extend([*before, callback])
    torch.manual_seed(0)  # the same initial weights whatever ran before
    train, val = loaders()
    if stream:
        train = torch.utils.data.DataLoader(Endless(train.dataset), batch_size=32)
    trainer.fit(Tiny(**trial.params), train, val)
    return trainer, callback


def test_reports_every_epoch_and_skips_the_sanity_check():
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None)
    study.enqueue({"lr": 0.05})
    trainer, cb = fit(study.ask())
    reports = study.trials[0].intermediate
    assert sorted(reports) == [0, 1, 2, 3, 4, 5]  # six epochs, no sanity-check report
    assert reports[5] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert reports[5] < reports[0] and cb.reports == 6 and not cb.pruned


class Endless(torch.utils.data.IterableDataset):
    """A dataset's samples over and over, without a length (a stream)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __iter__(self):
        while True:
            yield from self.dataset


@pytest.mark.parametrize(
    ("trainer_options", "steps"),
    [
        ({"val_check_interval": 0.5}, [0, 1, 2, 3, 4, 5]),  # twice an epoch: the validation
        ({"val_check_interval": 2, "check_val_every_n_epoch": None}, [0, 1, 2, 3]),  # 2 of 4
        ({"val_check_interval": 8, "check_val_every_n_epoch": None}, [1]),  # whole epochs
        ({"check_val_every_n_epoch": 2}, [1]),  # the epoch, as always
        ({"val_check_interval": 2, "max_steps": 6, "stream": True}, [0, 1, 2]),  # endless
    ],
)
def test_validations_within_an_epoch_are_reported_at_steps_of_their_own(trainer_options, steps):
    """Two validations in one epoch were both reported at the epoch: the second replaced the
    first, and the pruner decided at the same rung again, a part-epoch value against the other
    trials' whole ones. Where the epoch can repeat, the step is the validation's number."""
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None)
    study.enqueue({"lr": 0.05})
    trial = study.ask()
    options = {"max_epochs": 3 if trainer_options.get("val_check_interval") == 0.5 else 2}
    train, val = loaders()  # 4 training batches an epoch
    if trainer_options.pop("stream", False):  # a stream without a length, for max_steps
        train = torch.utils.data.DataLoader(Endless(train.dataset), batch_size=32)
        options = {"max_epochs": -1}
    trainer = L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[TuneCallback(trial)],
        **options,
        **trainer_options,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(Tiny(lr=0.05), train, val)
    reports = study.trials[0].intermediate
    assert sorted(reports) == steps and study.trials[0].note is None  # no step reported twice
    assert reports[steps[-1]] == pytest.approx(float(trainer.callback_metrics["val_loss"]))


def test_mode_max_and_a_mode_mismatch():
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None, mode="max", metric="val_score")
    trial = study.ask()
    with pytest.raises(ValueError, match="differs from the study's 'max'"):
        TuneCallback(trial, monitor="val_score", mode="min")
    fit(trial, monitor="val_score", mode="max")
    assert max(study.trials[0].intermediate.values()) < 0


def test_a_maximizing_study_with_the_default_monitor_is_refused():
    """``Study(mode="max")`` (its metric the generic ``value``) and ``TuneCallback(trial)``:
    the callback monitored ``val_loss`` under the study's ``max``, so it stopped the runs
    whose loss fell fastest and recorded losses as a maximized value."""
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None, mode="max")
    trial = study.ask()
    with pytest.raises(ValueError, match="monitors 'val_loss' unless told otherwise"):
        TuneCallback(trial)
    TuneCallback(trial, monitor="val_score")  # named: taken as the user's choice


def test_a_validate_before_or_after_fit_is_not_reported():
    """A baseline ``trainer.validate()`` before ``fit`` and a final one after it: each was
    reported as an epoch and judged by the pruner (a trial that trained fully ended PRUNED
    on its extra report). As Lightning's EarlyStopping, the callback skips them."""
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None)
    study.enqueue({"lr": 0.05})
    trial = study.ask()
    callback = TuneCallback(trial)
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[callback],
    )
    torch.manual_seed(0)
    model = Tiny(**trial.params)
    train, val = loaders()
    trainer.validate(model, val, verbose=False)
    trainer.fit(model, train, val)
    trainer.validate(model, val, verbose=False)
    assert sorted(study.trials[0].intermediate) == [0, 1, 2] and callback.reports == 3


def test_missing_metric_strict_raises_and_lists_keys():
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None)

    def objective(trial):
        fit(trial, monitor="val_los")
        return 0.0

    with pytest.warns(UserWarning, match="failed"):
        study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state is TrialState.FAILED
    assert "'val_los' was not logged; available: ['val_loss', 'val_score']" in t.error


def test_missing_metric_not_strict_warns_and_training_goes_on():
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None)
    with pytest.warns(RuntimeWarning, match="'val_los' was not logged"):
        trainer, _ = fit(study.ask(), monitor="val_los", strict=False)
    assert trainer.current_epoch == 6 and study.trials[0].intermediate == {}


def test_asha_prunes_a_deliberately_bad_config_early():
    study = Study(
        "c",
        {"lr": Float(1e-3, 1.0, log=True)},
        logdir=None,
        pruner="asha",
        pruner_options={"min_resource": 1, "eta": 3},
    )
    for lr in (0.05, 0.08, 0.1, 1e-3):  # the last barely moves: a bad configuration
        study.enqueue({"lr": lr})

    def objective(trial):
        trainer, _ = fit(trial, epochs=9)
        return trainer.callback_metrics["val_loss"]

    study.optimize(objective, n_trials=4)
    bad = study.trials[3]
    assert [t.state for t in study.trials[:3]] == [TrialState.COMPLETE] * 3
    assert bad.state is TrialState.PRUNED
    assert len(bad.intermediate) < 9  # stopped before max_epochs
    assert bad.value == bad.intermediate[max(bad.intermediate)]  # its last report
    # the same by ask/tell: a fit the callback stopped is told with its last value, and the
    # trial is PRUNED as optimize() records it, not a COMPLETE run of 9 epochs
    study.enqueue({"lr": 1.1e-3})
    trial = study.ask()
    trainer, callback = fit(trial, epochs=9)
    told = study.tell(trial, trainer.callback_metrics["val_loss"])
    assert callback.pruned and trainer.current_epoch < 9
    assert told.state is TrialState.PRUNED and told.value == pytest.approx(
        float(trainer.callback_metrics["val_loss"])
    )


NONE = {"check_val_every_n_epoch": None}


class FromThirdReport:
    """Rejects every trial from its third report on; counts the reports it was asked at."""

    name = "from_third_report"

    def __init__(self, never: bool = False):
        self.asked: list[int] = []
        self.never = never

    def prune(self, trial, others, mode):
        self.asked.append(len(trial.intermediate))
        return not self.never and len(trial.intermediate) >= 3


def test_a_trial_is_not_stopped_at_its_last_epoch_where_stopping_saves_nothing():
    """ASHA's last rung fell on the last epoch (min_resource 2, eta 3, 6 epochs): a trial
    that had trained to the end was recorded PRUNED and its value left out of the best. The
    callback does not ask at the last epoch; before it, the pruner decides as ever."""
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None, pruner=FromThirdReport())
    study.enqueue({"lr": 0.05})
    study.enqueue({"lr": 0.05})
    for epochs, state, reports in ((3, TrialState.COMPLETE, 3), (5, TrialState.PRUNED, 3)):
        trial = study.ask()
        trainer, callback = fit(trial, epochs=epochs)
        told = study.tell(trial, trainer.callback_metrics["val_loss"])
        assert (told.state, len(told.intermediate), callback.pruned) == (
            state,
            reports,
            state is TrialState.PRUNED,
        )
    assert study.best_trial.number == 0


@pytest.mark.parametrize(
    ("options", "reports"),
    [
        ({"max_epochs": 3}, 3),
        ({"max_epochs": 4, "check_val_every_n_epoch": 2}, 2),  # epochs 1 and 3
        ({"max_epochs": -1, "max_steps": 10}, 2),  # 4 batches an epoch: steps 4, 8 (then 10)
        ({"max_epochs": 2, "val_check_interval": 0.5}, 4),  # twice an epoch
        # every N batches of the whole fit (check_val_every_n_epoch=None): the last of them
        # was asked, as only the last batch of the last epoch counted as the end
        ({"max_epochs": -1, "max_steps": 11, "val_check_interval": 3, **NONE}, 3),  # 3, 6, 9
        ({"max_epochs": 3, "val_check_interval": 5, **NONE}, 2),  # batches 5, 10 of 12
        ({"max_epochs": 3, "val_check_interval": 3, **NONE}, 4),  # 3, 6, 9 and the last, 12
        ({"max_epochs": 3, "val_check_interval": 8, **NONE}, 1),  # every 2nd epoch's end
        ({"max_epochs": 2, "val_check_interval": 3}, 2),  # the 3rd batch of each epoch
        # accumulation: 2 steps an epoch; validations at steps 1, 2, ..., 5 (the end)
        ({"max_epochs": -1, "max_steps": 5, "val_check_interval": 0.5, "accumulate": 2}, 5),
        ({"max_epochs": -1, "max_steps": 7, "val_check_interval": 2, "stream": True}, 3),
    ],
)
def test_the_pruner_is_asked_at_every_validation_but_the_last(options, reports):
    pruner = FromThirdReport(never=True)
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None, pruner=pruner)
    trial = study.ask()
    options = dict(options)
    if "accumulate" in options:
        options["accumulate_grad_batches"] = options.pop("accumulate")
    fit(trial, trainer_options=options, stream=options.pop("stream", False))
    assert len(study.trials[0].intermediate) == reports
    assert pruner.asked == list(range(1, reports))


class DivergesAtTheEnd(L.Callback):
    """The monitored loss turns NaN at the last epoch's validation."""

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == trainer.max_epochs and not trainer.sanity_checking:
            pl_module.log("val_loss", float("nan"))


def test_a_run_that_diverges_at_its_last_epoch_is_still_stopped_as_the_worst():
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None, pruner="asha")
    trial = study.ask()
    trainer, callback = fit(trial, epochs=3, before=[DivergesAtTheEnd()])
    told = study.tell(trial, trainer.callback_metrics["val_loss"])
    assert callback.pruned and told.state is TrialState.PRUNED and told.value == float("inf")


def test_state_dict_round_trip():
    study = Study("c", {"lr": Float(0.01, 0.1)}, logdir=None)
    cb = TuneCallback(study.ask())
    cb.pruned, cb.reports = True, 4
    other = TuneCallback(study.ask())
    other.load_state_dict(cb.state_dict())
    assert (other.pruned, other.reports) == (True, 4)
    assert cb.state_key == "TuneCallback{'monitor': 'val_loss', 'mode': 'min'}"


def run_ddp(logdir, mode):
    """The DDP script (tests/scripts/ddp_study.py) in ``mode``; each rank's lines: (trial,
    resume_from or -1, the epochs it trained), once rank 1 has written its last one."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "ddp_study.py"), str(logdir), mode],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 1 may still be writing its last line when rank 0 exits: wait for it (bounded)
    rank_0 = (logdir / "rank_0.txt").read_text().splitlines()
    deadline = time.monotonic() + 30
    while len(rank_1 := (logdir / "rank_1.txt").read_text().splitlines()) < len(rank_0):
        assert time.monotonic() < deadline, (rank_0, rank_1)
        time.sleep(0.2)
    lines = [[tuple(map(int, line.split())) for line in r] for r in (rank_0, rank_1)]
    assert lines[0] == lines[1], lines  # both ranks trained the same trials, the same epochs
    deadline = time.monotonic() + 30
    while not (best_1 := logdir / "best_1.txt").exists():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # what each rank read of the closed study: the same
    assert best_1.read_text() == (logdir / "best_0.txt").read_text()
    return lines[0]


def test_ddp_two_processes_on_cpu_prune_without_hanging(tmp_path):
    """Lightning runs the script again for rank 1; there the study follows rank 0's trials.
    Both ranks must train the same trials, the bad one must stop early on both, and the whole
    run must end (bounded by the timeout) with rank 0 alone writing the database, also what
    ``add`` and ``enqueue`` (repeats) ask on every rank."""
    lines = run_ddp(tmp_path, "asha")
    trials = Storage(tmp_path / "ddp" / "study.db", read_only=True).trials()
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,  # added, once
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
    ]
    assert trials[0].params == {"lr": 0.3} and trials[0].value == 5.0
    assert len(trials[3].intermediate) == 1  # ASHA's first rung: stopped after one epoch
    # the pruned one stopped at epoch 1 of 9 on both ranks
    assert [(n, len(epochs)) for n, _, *epochs in lines] == [(1, 9), (2, 9), (3, 1)]


def test_ddp_trials_resume_from_their_pause_checkpoint_on_every_rank(tmp_path):
    """A paused trial that rank 0 runs again has a lower number than the last: rank 1 waited
    for a higher one, 600 s, while rank 0 waited for it in DDP. Every rank must join the
    resumed run, load the same pause checkpoint and train only the epochs after it."""
    lines = run_ddp(tmp_path, "resume")
    resumed = [(n, r, epochs) for n, r, *epochs in lines if r >= 0]
    assert resumed, lines
    for _, resume_from, epochs in resumed:
        assert epochs and epochs[0] == resume_from + 1  # went on after the pause
    trials = {t.number: t for t in Storage(tmp_path / "ddp_resume" / "study.db").trials()}
    for number in {n for n, *_ in lines}:  # no epoch trained twice, its reports whole
        trained = [e for n, _, *epochs in lines if n == number for e in epochs]
        assert len(trained) == len(set(trained))
        assert sorted(trials[number].intermediate) == sorted(trained)
