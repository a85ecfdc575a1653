"""Shared helpers: run the real CLI in a subprocess, and write small recipes to tmp dirs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

# The tests send the CLI Ctrl-C and SIGHUP as a terminal would. A suite started in the
# background (``pytest &``, nohup) runs with those ignored, and the CLI keeps an ignored signal
# ignored, as a program should: give the children the terminal's defaults back.
for _sig in (signal.SIGINT, signal.SIGHUP):
    if signal.getsignal(_sig) is signal.SIG_IGN:
        signal.signal(_sig, signal.SIG_DFL if _sig == signal.SIGHUP else signal.default_int_handler)

# A fast objective: a smooth bowl with its minimum at x=0.3, y=0.7, plus an optional sleep so
# the kill/interrupt tests can catch a trial mid-run.
FAST_OBJECTIVE = """
import time

def train(trial, sleep=0.0, fail_above=None):
    time.sleep(sleep)
    x, y = trial.params["x"], trial.params["y"]
    if fail_above is not None and x > fail_above:
        raise RuntimeError(f"x={x} is too large")
    return (x - 0.3) ** 2 + (y - 0.7) ** 2
"""

FAST_RECIPE = """\
# torchtune-hp run {path}
description: a fast test study
study: {{name: fast, metric: loss, mode: min, trials: {trials}, seed: 0}}
space:
  x: {{type: float, low: 0.0, high: 1.0}}
  y: {{type: float, low: 0.0, high: 1.0}}
sampler: {{name: {sampler}}}
objective: {{function: fast.py:train}}
train: {{sleep: {sleep}}}
logdir: {logdir}
"""


def run_cli(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess:
    """``torchtune-hp ARGS`` as a user runs it (``python -m torchtune_hp`` is the same entry);
    ``preexec_fn`` sets up the process as a shell would (a resource limit)."""
    return subprocess.run(
        cli_cmd(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        preexec_fn=preexec_fn,
    )


def on_terminal(
    *args: str, cwd: Path, columns: int | None = None, timeout: float = 120
) -> tuple[int, str]:
    """``torchtune-hp ARGS`` with its output on a pseudo-terminal (``COLUMNS`` wide when
    given), as a user sees it: the exit code and everything it wrote there."""
    import pty
    import select

    leader, follower = pty.openpty()
    env = {**os.environ, **({"COLUMNS": str(columns)} if columns else {})}
    proc = subprocess.Popen(cli_cmd(*args), cwd=cwd, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 0.2)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last process has gone
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    rc = proc.wait(timeout=10)
    os.close(leader)
    return rc, out.decode(errors="replace").replace("\r\n", "\n")


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchtune_hp", *args]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


X_SPACE = {"x": {"type": "float", "low": 0.0, "high": 1.0}}


def function_recipe(
    folder: Path,
    source: str,
    name: str,
    trials: int,
    space: dict = X_SPACE,
    file: str = "r.yaml",
    metric: str | None = None,
    **sections,
) -> Path:
    """``folder/obj.py`` holding ``source`` (its ``train`` is the objective) and the recipe
    ``folder/<file>`` that tunes it: study ``name``, seed 0, ``logdir: logs``."""
    (folder / "obj.py").write_text(source)
    study = {"name": name, "trials": trials, "seed": 0}
    if metric is not None:
        study["metric"] = metric
    recipe = {
        "study": study,
        "space": space,
        "objective": {"function": "obj.py:train"},
        "logdir": "logs",
        **sections,
    }
    return write_yaml(folder / file, recipe)


def xy_recipe(
    folder: Path, objective: dict, trials: int = 3, logdir: str = "logs", **sections
) -> Path:
    """``folder/recipe.yaml``: study ``sub`` (metric ``loss``) over x, y in [0, 1], random
    search, the given objective; by default the relative ``logdir: logs`` every built-in recipe
    has. ``sections`` replace or add whole sections."""
    recipe = {
        "study": {"name": "sub", "metric": "loss", "trials": trials, "seed": 0},
        "space": {
            "x": {"type": "float", "low": 0.0, "high": 1.0},
            "y": {"type": "float", "low": 0.0, "high": 1.0},
        },
        "sampler": {"name": "random"},
        "objective": objective,
        "logdir": logdir,
        **sections,
    }
    return write_yaml(folder / "recipe.yaml", recipe)


def read_trials(study_dir: Path) -> list:
    """A study's trials as its database holds them (read-only, as the CLI reads them)."""
    from torchtune_hp.storage import Storage

    storage = Storage(study_dir / "study.db", read_only=True)
    try:
        return storage.trials()
    finally:
        storage.close()


def private_mounts(script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a bash script in a mount namespace of its own, so a test can mount a tiny or a
    read-only file system (a full disk, read-only media) without touching the machine's."""
    prefix = ["unshare", "-m", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix.insert(1, "-r")  # a user namespace, where this user may mount
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"needs a private mount namespace: {probe.stderr.decode().strip()}")
    return subprocess.run(
        [*prefix, "bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def seen_pids(study_dir: Path) -> list[int]:
    """The pids of the trials of ``study_dir`` that tests/scripts/fake_train.py has started."""
    return [json.loads(p.read_text())["pid"] for p in study_dir.glob("trial_*/seen.json")]


def wait_seen(study_dir: Path, n: int, driver: subprocess.Popen, timeout: float = 150) -> list[int]:
    """Wait until ``n`` trials of fake_train.py have started under ``driver``; their pids."""
    deadline = time.monotonic() + timeout
    while len(seen_pids(study_dir)) < n:
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode})"
        assert time.monotonic() < deadline, f"{n} trials never ran at once"
        time.sleep(0.2)
    return seen_pids(study_dir)


def pid_alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def fast_recipe(tmp_path: Path):
    """Write the fast recipe and objective; returns a function taking the recipe fields."""

    def make(trials: int = 6, sampler: str = "sobol", sleep: float = 0.0) -> Path:
        (tmp_path / "fast.py").write_text(textwrap.dedent(FAST_OBJECTIVE))
        path = tmp_path / "fast.yaml"
        path.write_text(
            FAST_RECIPE.format(
                path=path, trials=trials, sampler=sampler, sleep=sleep, logdir=tmp_path / "logs"
            )
        )
        return path

    return make
