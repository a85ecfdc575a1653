"""TensorBoard output of a study: event files, HParams protos, GP pictures."""

from torchtune_hp.board.study_board import StudyBoard, trial_run_name

__all__ = ["StudyBoard", "trial_run_name"]
