"""A tuning script whose trials train with 2-process DDP on CPU (``strategy="ddp"``).

Lightning starts rank 1 by running this file again; there the study follows rank 0's trials.
Usage: python ddp_study.py LOGDIR. Each rank appends the trials it trained to
LOGDIR/rank_<r>.txt, so the test can see that both ranks trained the same trials.
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


def objective(trial):
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        logger=trial.logger(),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TuneCallback(trial, monitor="val_loss")],
    )
    trainer.fit(Tiny(**trial.params), *loaders())
    with open(os.path.join(LOGDIR, f"rank_{trainer.global_rank}.txt"), "a") as f:
        f.write(f"{trial.number} {trainer.current_epoch}\n")
    return trainer.callback_metrics["val_loss"]


if __name__ == "__main__":
    LOGDIR = sys.argv[1]
    study = Study(
        "ddp",
        {"lr": Float(1e-6, 0.5, log=True)},
        sampler="random",
        seed=0,
        logdir=LOGDIR,
        pruner="asha",
        pruner_options={"min_resource": 1, "eta": 2},
    )
    if not study.follower:
        for lr in (0.1, 0.2, 1e-6):  # two good ones, then one that cannot learn: pruned
            study.enqueue({"lr": lr})
    study.optimize(objective, n_trials=3)
    study.close()
