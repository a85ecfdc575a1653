"""The errors a user can be shown. The CLI turns each into one line: bad input and unusable files
exit 2, a study stopped on repeated failures exits 1 (see the README's exit codes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class ConfigError(ValueError):
    """Bad input in a recipe: which file, which key, what was expected."""

    def __init__(self, file: str | Path, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file, self.key, self.message = str(file), key, message


class StorageError(RuntimeError):
    """The study's files cannot be used: damaged, from a newer version, not writable, full."""


class StudyLocked(StorageError):
    """Another live process drives this study."""


class UnsafePath(StorageError):
    """A path inside a study folder is a symbolic link (or otherwise not ours to write)."""


class StudyStopped(RuntimeError):
    """The study stopped itself: its first trials all failed with the same error."""


class TimeLimitReached(UserWarning):
    """A warning: a study's ``timeout`` passed before it held its ``n_trials`` (the study
    ended early, as asked; running it again goes on)."""


class ClusterGone(RuntimeError):
    """The Ray cluster a study runs on stopped answering (``ray stop``, its head node died):
    the study stops, its running trials interrupted, to run again once the cluster is back."""


class StudyMismatch(ValueError):
    """An existing study was opened with another space, metric or mode; ``keys``: the
    recipe keys that differ (``space.lr``, ``study.metric``), so a recipe's run can name them."""

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.keys = list(keys)
