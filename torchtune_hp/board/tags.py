"""The scalar tags the board writes into a trial's run (no TensorBoard import: the pool reads
them to tell the launcher's own tags from what a script logged)."""

PRUNED_TAG = "trial/pruned"


def objective_tag(metric: str) -> str:
    """The scalar tag, in each trial's run, that holds the objective as the HParams metric
    (apart from the curves Lightning logs under the metric's own name)."""
    return f"trial/{metric}"
