"""A tuning script whose trials train with 2-process DDP on CPU (``strategy="ddp"``).

Lightning starts rank 1 by running this file again; there the study follows rank 0's trials.
Usage: python ddp_study.py LOGDIR [asha|resume]. Each rank appends a line per trial it trained
to LOGDIR/rank_<r>.txt (the trial, its ``resume_from`` or -1, the epochs it trained), so the
test can see that both ranks trained the same trials from the same epochs, and what it read
of the study after closing it to LOGDIR/best_<r>.txt.

``asha``: every rank runs the whole script, ``add`` and ``enqueue`` (repeats) included, as a
user's script does; rank 0 alone records them. ``resume``: the gp pruner pauses trials and runs
them again from their pause checkpoint (extreme options: it stops at every rung and resumes
whenever it can), and rank 1 must join each resumed run from the same checkpoint.
"""

import os
import sys
import warnings
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/, for tiny_model
from tiny_model import Tiny, loaders  # noqa: E402

from torchtune_hp import Float, Study, TuneCallback  # noqa: E402

EPOCHS = 9


class Seen(L.Callback):
    """The epochs this rank trains."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epochs.append(trainer.current_epoch)


def objective(trial):
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    seen = Seen()
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        logger=trial.logger(),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TuneCallback(trial, monitor="val_loss"), seen],
    )
    trainer.fit(Tiny(**trial.params), *loaders(), ckpt_path=trial.ckpt_path)
    resumed = -1 if trial.resume_from is None else trial.resume_from
    with open(os.path.join(LOGDIR, f"rank_{trainer.global_rank}.txt"), "a") as f:
        f.write(f"{trial.number} {resumed} {' '.join(map(str, seen.epochs))}\n")
    return trainer.callback_metrics["val_loss"]


if __name__ == "__main__":
    LOGDIR = sys.argv[1]
    mode = sys.argv[2] if len(sys.argv) > 2 else "asha"
    space = {"lr": Float(1e-6, 0.5, log=True)}
    if mode == "asha":
        study = Study(
            "ddp",
            space,
            sampler="random",
            seed=0,
            logdir=LOGDIR,
            pruner="asha",
            pruner_options={"min_resource": 1, "eta": 2},
        )
        # on every rank, repeats included: a follower records nothing (it wrote to a
        # read-only database and took the whole job down)
        study.add({"lr": 0.3}, 5.0, skip_if_exists=False)
        for lr in (0.1, 0.2, 1e-6):  # two good ones, then one that cannot learn: pruned
            study.enqueue({"lr": lr}, skip_if_exists=False)
        study.optimize(objective, n_trials=4)
    else:
        study = Study(
            "ddp_resume",
            {"lr": Float(0.02, 0.2, log=True)},
            sampler="random",
            seed=1,
            logdir=LOGDIR,
            pruner="gp",
            pruner_options={
                "resume": True,
                "resume_ratio": 1e-9,
                "threshold": 0.0,
                "gain_ratio": 1e9,
                "n_startup": 1,
            },
        )
        study.optimize(objective, n_trials=3)
    study.close()
    # read after close on every rank, as a script does (a follower's closed database raised)
    rank = os.environ.get("LOCAL_RANK", "0")
    best = f"{study.best_params} {len(study.trials)}"
    Path(LOGDIR, f"best_{rank}.part").write_text(best)
    os.replace(Path(LOGDIR, f"best_{rank}.part"), Path(LOGDIR, f"best_{rank}.txt"))  # whole
