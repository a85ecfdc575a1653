"""Thread count and autograd for the GP's small tensor work.

On small matrices (a few hundred rows) the cost of waking a second intra-op thread is larger
than the work: measured here, a marginal-likelihood evaluation at n=100 took 3-5x longer with 2
threads than with 1. The sampler runs its small work on one thread and restores the caller's
setting afterwards, so an inline training run keeps all its threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` intra-op threads, and autograd on whatever the caller turned off: the model is
    fit by gradients, and ``pruner: gp`` is asked from inside Lightning's validation loop
    (``TuneCallback.on_validation_end``), which runs under ``torch.inference_mode``."""
    before = torch.get_num_threads()
    with torch.inference_mode(False), torch.enable_grad():
        if n == before:
            yield
            return
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)
