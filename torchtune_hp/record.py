"""A study read from its folder without opening it: :func:`load_study` for analysis in a
notebook or a script while a driver runs the study, or after it (Optuna's ``load_study``).

Opening a :class:`~torchtune_hp.study.Study` needs its space and takes its lock (a second
driver is refused), and it may record things (a trial left RUNNING by a dead driver); a
record does neither: it reads the database read-only, once, and is a snapshot of that moment.
The command line's ``trials``, ``best`` and ``validate`` read a study the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchtune_hp import files
from torchtune_hp.errors import StorageError
from torchtune_hp.space import Space
from torchtune_hp.storage import Storage
from torchtune_hp.trial import FrozenTrial, best_of


class BestTrial:
    """``best_trial``, ``best_params`` and ``best_value`` (Optuna's names) of whatever has a
    ``name`` and an ``incumbent``: a running study and a record of one alike."""

    name: str

    @property
    def incumbent(self) -> FrozenTrial | None:
        raise NotImplementedError

    @property
    def best_trial(self) -> FrozenTrial:
        best = self.incumbent
        if best is None:
            raise ValueError(f"study {self.name!r} has no COMPLETE trial yet")
        return best

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best_trial.params)

    @property
    def best_value(self) -> float:
        value = self.best_trial.value
        assert value is not None
        return value


@dataclass(frozen=True)
class StudyRecord(BestTrial):
    """A study as its folder held it when read: what it searches, how it ranks, its trials."""

    name: str
    dir: Path
    space: Space
    metric: str
    mode: str
    seed: int | None
    trials: list[FrozenTrial]
    sampler: str | None = None  # the names its last run searched with (not their settings)
    pruner: str | None = None

    @classmethod
    def of(cls, study_dir: Path, meta: Mapping[str, Any], trials: list[FrozenTrial]) -> StudyRecord:
        """From a study's stored ``meta`` (its database's) and its ``trials``."""
        return cls(
            name=study_dir.name,  # its folder's: a folder renamed or copied is that study
            dir=study_dir,
            space=Space.from_dict(meta["space"]),
            metric=str(meta["metric"]),
            mode=str(meta["mode"]),
            seed=meta.get("seed"),
            trials=trials,
            sampler=meta.get("sampler"),
            pruner=meta.get("pruner"),
        )

    @property
    def n_finished(self) -> int:
        """Trials that count toward ``study.trials`` (interrupted ones do not)."""
        return sum(t.counts for t in self.trials)

    @property
    def incumbent(self) -> FrozenTrial | None:
        """The best COMPLETE trial, or None."""
        return best_of(self.trials, self.mode)

    def trials_dataframe(self) -> Any:
        """As :meth:`Study.trials_dataframe <torchtune_hp.study.Study.trials_dataframe>`:
        Optuna's column names. Needs pandas."""
        from torchtune_hp.export import dataframe

        return dataframe(self.trials, self.space)


def study_folder(path: str | Path) -> Path:
    """The study folder that ``path`` names: the folder itself (``logs/<study name>``), or its
    ``study.db`` (Optuna's habit: the storage file); StorageError for another file."""
    study_dir = Path(path)
    if study_dir.name == files.DATABASE and not study_dir.is_dir():  # there or not: its folder
        return study_dir.parent
    if study_dir.is_file():
        raise StorageError(
            f"{study_dir}: a file; give the study's folder (logs/<study name>) or its "
            f"{files.DATABASE}"
        )
    return study_dir


def read_stored(study_dir: Path) -> tuple[dict[str, Any], list[FrozenTrial]]:
    """The study database's metadata (empty where no study was started in it) and trials,
    read-only. FileNotFoundError naming the folder (and the studies below it, where it is a
    logdir) where there is no database; StorageError where it cannot be read."""
    storage = Storage(study_dir / files.DATABASE, read_only=True)
    try:
        return storage.get_meta(), storage.trials()
    finally:
        storage.close()


def load_study(path: str | Path) -> StudyRecord:
    """The study in the folder ``path`` (``logs/<study name>``, or its ``study.db``), read
    now, read-only."""
    study_dir = study_folder(files.absolute(Path(path)))
    meta, trials = read_stored(study_dir)
    if not meta:
        raise StorageError(f"{study_dir}: its database holds no study yet")
    return StudyRecord.of(study_dir, meta, trials)
