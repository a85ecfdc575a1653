"""Which devices each parallel trial may see, exported as ``CUDA_VISIBLE_DEVICES``.

``devices: cpu`` hides every GPU (``CUDA_VISIBLE_DEVICES=""``); ``auto`` takes every visible
GPU, or ``cpu`` when there is none; a list (``[0, 1]``) names them. With
``devices_per_trial: m`` each trial gets ``m`` consecutive devices; with
``trials_per_device: k`` each device (group) hosts ``k`` trials at once. The slots bound the
number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def visible_gpus() -> list[str]:
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def device_slots(
    devices: str | Sequence[int | str],
    workers: int,
    trials_per_device: int = 1,
    devices_per_trial: int = 1,
) -> list[str | None]:
    """One ``CUDA_VISIBLE_DEVICES`` value per worker slot."""
    if trials_per_device < 1 or devices_per_trial < 1:
        raise ValueError("trials_per_device and devices_per_trial must be >= 1")
    if devices == "auto":
        devices = visible_gpus() or "cpu"
    if devices == "cpu":
        return [""] * workers
    if isinstance(devices, str):
        raise ValueError(f"devices must be auto, cpu or a list of device ids, got {devices!r}")
    ids = [str(d) for d in devices]
    if len(ids) < devices_per_trial:
        raise ValueError(f"devices_per_trial={devices_per_trial} but only {len(ids)} devices")
    groups = [
        ",".join(ids[i : i + devices_per_trial])
        for i in range(0, len(ids) - devices_per_trial + 1, devices_per_trial)
    ]
    return [g for g in groups for _ in range(trials_per_device)]


def threads_per_worker(workers: int) -> int:
    """CPU threads each trial may use, so that N workers do not oversubscribe the cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
