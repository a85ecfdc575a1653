"""One rank of a distributed job, without the collectives: ``python rank_study.py LOGDIR
ENDING``. Run with ``LOCAL_RANK=1`` it is a follower; otherwise it is rank 0, and ENDING says
how its driver loop ends: ``grid`` (the grid is exhausted), ``raise`` (an error after the first
trial) or ``wait`` (it runs until a signal stops it). Each rank appends the trials it runs to
LOGDIR/<rank>.txt."""

import os
import sys
import time

from torchtune_hp import Categorical, Study

logdir, ending = sys.argv[1], sys.argv[2]
rank = os.environ.get("LOCAL_RANK", "0")
choices = [1, 2] if ending == "grid" else list(range(50))  # grid: exhausted after two trials
study = Study("ddp", {"c": Categorical(choices)}, sampler="grid", seed=0, logdir=logdir)


def objective(trial):
    with open(os.path.join(logdir, f"{rank}.txt"), "a") as f:
        f.write(f"{trial.number}\n")
    deadline = time.monotonic() + 60  # in DDP the ranks train each trial together: rank 0
    while rank == "0" and not os.path.exists(os.path.join(logdir, "1.txt")):  # waits for 1
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    return float(trial.params["c"])


def crash_after_the_first(study, frozen):
    if ending == "raise" and rank == "0":
        raise RuntimeError("rank 0 crashed")


study.optimize(objective, n_trials=50, callbacks=[crash_after_the_first])
study.close()
