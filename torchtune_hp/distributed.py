"""Which process of a multi-process (DDP) training job this is, from the launcher's environment.

Lightning's ``strategy="ddp"`` starts ranks 1..n-1 by running the user's script again with
``LOCAL_RANK`` (and ``NODE_RANK``) set; torchrun sets ``RANK``. Those processes run the same
study loop as rank 0, so the study must follow rank 0's trials instead of driving its own.
"""

from __future__ import annotations

import os

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK")


def is_follower_rank() -> bool:
    """True in a process that is not global rank 0 of a distributed job."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0").strip() or "0"
        if value.isdigit() and int(value) > 0:
            return True
    return False
