"""Where a study's TensorBoard output goes, by name (no TensorBoard import: the pool reads these
to tell the launcher's own output from what a script logged).

``logs/<study>/study/`` is the study-level run (its scalars); ``study/views/`` and
``study/gp/`` hold the latest pictures (each redraw replaces their event file);
``logs/<study>/trial_0007/`` holds the trial's own curves (its Lightning logger, its script);
``trial_0007/pruner_forecast/`` the learning-curve model's forecasts of its final value
(``pruner: gp``); ``trial_0007/running/`` its HParams session while it runs and
``trial_0007/hparams/`` once it has ended (a session's state cannot change in place:
TensorBoard keeps a tag's metadata from its first event, so the
running session is removed); ``trial_0007/failed_curve/`` the reports of a trial that FAILED
(its session has no objective: the HParams table would take its last report for its result;
this run is no session's, so it is no metric column, only a curve among the others).
"""

STUDY_RUN = "study"
VIEWS_RUN = "study/views"  # the study views (history, curves, slices, pairs, parallel)
GP_RUN = "study/gp"  # the GP sampler's pictures (slices, importance)
RUNNING_RUN = "running"
SESSION_RUN = "hparams"
FORECAST_RUN = "pruner_forecast"  # pruner gp: its forecast at each decision
FAILED_CURVE_RUN = "failed_curve"  # a FAILED trial's reports, outside its session
OUR_RUNS = (RUNNING_RUN, SESSION_RUN, FORECAST_RUN, FAILED_CURVE_RUN)
ERROR_TAG = "error"
OUR_SUFFIX = ".torchtune_hp"  # ends the name of every event file the board writes


def trial_run_name(number: int) -> str:
    return f"trial_{number:04d}"


def objective_tag(metric: str) -> str:
    """The scalar tag, in a trial's session run, that holds the objective as the HParams metric
    column: each report as it arrives, the trial's value last (none for a FAILED trial)."""
    return f"objective/{metric}"
