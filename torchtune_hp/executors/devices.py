"""Which devices each trial may use: slots of GPUs taken from the driver's own visible set.

The rule (also in the README): trials only ever get GPUs the driver itself was given. Under
``CUDA_VISIBLE_DEVICES=2,3`` the driver sees two GPUs; ``devices: auto`` hands out exactly those
two, and a trial process gets ``CUDA_VISIBLE_DEVICES=2`` or ``3`` (the driver's own ids: numbers,
UUIDs or MIG names, as it was given them), never ``0`` or ``1``, which may be someone else's
GPUs on a shared server. An explicit list names positions within that set, as ``cuda:N`` does
in the driver: ``devices: [1]`` under that mask is GPU ``3``. Without a mask, positions are the
machine's GPU ids. ``devices: cpu`` hides every GPU from trials (``CUDA_VISIBLE_DEVICES=""``);
``auto`` without a GPU is ``cpu``.

``devices_per_trial: m`` gives each trial ``m`` consecutive devices; ``trials_per_device: k``
lets ``k`` trials share one device (group). The slots bound the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from torchtune_hp.display import counted

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Slot:
    """One place a trial can run: ``positions`` of its GPUs in the driver's visible set (what
    an in-process trial uses), ``visible`` the ``CUDA_VISIBLE_DEVICES`` of a trial process."""

    positions: tuple[int, ...]
    visible: str


def mask_entries() -> list[str] | None:
    """The driver's ``CUDA_VISIBLE_DEVICES`` entries, or None when it has no mask. CUDA stops
    reading a mask at its first invalid entry (``-1``): so do these."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return None
    entries = []
    for e in (e.strip() for e in mask.split(",")):
        if not e or e.startswith("-"):
            break
        entries.append(e)
    return entries


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def driver_gpus(count: int | None = None) -> list[str]:
    """The GPUs the driver may use, in its own terms (CUDA stops reading a mask at its first
    invalid entry, so the count torch sees, ``count``, decides how many entries are real)."""
    count = gpu_count() if count is None else count
    entries = mask_entries()
    if entries is None:
        return [str(i) for i in range(count)]
    return entries[:count]


def device_slots(
    devices: str | Sequence[int],
    workers: int,
    trials_per_device: int = 1,
    devices_per_trial: int = 1,
) -> list[Slot]:
    """One slot per trial that may run at once (at most ``workers``... see module docstring)."""
    if trials_per_device < 1 or devices_per_trial < 1:
        raise ValueError("trials_per_device and devices_per_trial must be >= 1")
    if devices == "auto":
        gpus = driver_gpus()
        if not gpus:
            devices = "cpu"
    if devices == "cpu":
        return [Slot((), "")] * workers
    if devices == "auto":
        ids = gpus
    elif isinstance(devices, str):
        raise ValueError(f"devices must be auto, cpu or a list of device ids, got {devices!r}")
    else:
        if len(set(devices)) != len(devices):
            raise ValueError(
                f"devices lists a GPU twice ({list(devices)}); to share a GPU between trials, "
                "set trials_per_device"
            )
        ids = [_driver_id(d) for d in devices]
    positions = list(range(len(ids))) if devices == "auto" else [int(d) for d in devices]
    if len(ids) < devices_per_trial:
        raise ValueError(f"devices_per_trial={devices_per_trial} but only {len(ids)} devices")
    slots = []
    for i in range(0, len(ids) - devices_per_trial + 1, devices_per_trial):
        group = slice(i, i + devices_per_trial)
        slots.append(Slot(tuple(positions[group]), ",".join(ids[group])))
    # round robin: the executor takes the first free slot, so trials spread over the devices
    # before any device gets a second one
    return [s for _ in range(trials_per_device) for s in slots]


def _driver_id(position: int) -> str:
    """The driver's own id of the GPU at ``position`` of its visible set."""
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"devices lists GPU positions (integers >= 0), got {position!r}")
    entries = mask_entries()
    if entries is None:
        return str(position)
    if position >= len(entries):
        raise ValueError(
            f"devices names GPU position {position}, but CUDA_VISIBLE_DEVICES="
            f"{os.environ['CUDA_VISIBLE_DEVICES']!r} leaves the driver "
            f"{counted(len(entries), 'GPU')} (positions count within that set, from 0)"
        )
    return entries[position]


def thread_env(workers: int, cpus: float | None = None) -> dict[str, str]:
    """CPU threads for each trial process so that ``workers`` trials do not oversubscribe the
    cores: cores / workers (or the ``cpus`` a cluster gave the trial), unless the user set the
    variable, which is then respected."""
    share = (os.cpu_count() or 1) // max(1, workers) if cpus is None else int(cpus)
    threads = str(max(1, share))
    return {name: os.environ.get(name, threads) for name in THREAD_VARIABLES}
