"""TensorBoard output of a study: event files, HParams protos, GP pictures.

TensorBoard is imported only when a study writes to it (:class:`StudyBoard` loads on first
use), so reading :mod:`torchtune_hp.board.tags` costs nothing."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "StudyBoard":
        from torchtune_hp.board.study_board import StudyBoard

        return StudyBoard
    raise AttributeError(f"module 'torchtune_hp.board' has no attribute {name!r}")


__all__ = ["StudyBoard"]
