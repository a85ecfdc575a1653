"""Leaving a Ray cluster, also one that is gone.

``ray.shutdown()`` with the cluster's control store gone (its head node died, ``ray stop``,
or a stop signal sent to the whole process group, which ends an ``address: local`` cluster
with the driver) spends 15 s or more trying to reach it, and Ray's own exit hook does the same
again when the interpreter ends: a study stopped that way took 20-30 s to exit, past Docker's
10 s stop grace. Where the store does not answer, :func:`shut_down` leaves Ray as it is and
the command ends without the interpreter's exit hooks (:func:`exit_now_if_left`, called by
the entry point once everything of ours is closed: the study, its files, TensorBoard).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from torchtune_hp.executors.address import host_port, unreachable

ANSWER_S = 1.0  # a control store on a live cluster answers a connection in milliseconds

_left_unclosed = False  # a gone cluster was left without ray.shutdown()


def answers(address: str | None) -> bool:
    """Whether ``address`` (host:port) accepts a connection; an address of another form
    (a Ray Client's, unknown) counts as answering, so Ray is shut down as usual."""
    where = None if address is None else host_port(address)
    return where is None or unreachable(where, ANSWER_S) is None


def control_store(ray: Any) -> str | None:
    """The connected cluster's control store (host:port), None where Ray does not say."""
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:
        return None


def shut_down(ray: Any) -> None:
    """``ray.shutdown()`` where the cluster still answers; else leave it (see the module)."""
    global _left_unclosed
    if not ray.is_initialized():
        return
    if answers(control_store(ray)):
        ray.shutdown()
    else:
        _left_unclosed = True


def exit_now_if_left(code: int) -> None:
    """End the process with ``code`` now, skipping the interpreter's exit hooks, where
    :func:`shut_down` left a gone cluster (Ray's hook would wait on it again)."""
    if not _left_unclosed:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
