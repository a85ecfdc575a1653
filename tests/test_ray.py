"""The Ray executor against a real Ray cluster on this machine: a head and a second node, each
started here with ``ray start`` (token authentication on, as Ray's default), stopped by the
session ids the test got. Trials run in node-local folders (what a cluster without a shared
file system does) and are copied back to the driver's ``logs/``.

Needs the ``ray`` extra (``pip install -e ".[ray]"``); ``.ci/run`` installs it."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import cli_cmd, pid_alive, read_trials, run_cli, seen_pids, wait_seen, xy_recipe

from torchtune_hp import TrialState
from torchtune_hp.trial import Interruption

pytest.importorskip("ray")

pytestmark = pytest.mark.ray
SCRIPTS = Path(__file__).parent / "scripts"
START_S = 120  # a node on a busy 2-core machine takes 5-30 s to start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Every process of the session ``ray start`` led (its raylet, workers, actors)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry))
    return out


def _kill_session(sid: int) -> None:
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    nodes: list[subprocess.Popen]

    def add_node(self, cpus: int, **env: str) -> subprocess.Popen:
        node = _ray_start(["--address", self.address, f"--num-cpus={cpus}"], {**self.env, **env})
        self.nodes.append(node)
        return node

    def kill(self, node: subprocess.Popen) -> None:
        """The node is lost: its raylet and everything it runs die at once."""
        _kill_session(node.pid)
        node.wait()


def _ray_start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        # This interpreter's Ray, not the first ``ray`` on PATH: the node's workers run under
        # the python that started it, and they must import the package under test.
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--block"]
        + ["--disable-usage-stats", "--object-store-memory=80000000"]
        + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_S
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:  # ends when the node started (or failed)
        seen.append(line)
        if "Ray runtime started" in line:
            break
        if time.monotonic() > deadline:
            break
    else:
        raise AssertionError("ray start ended: " + "".join(seen[-20:]))
    if not any("Ray runtime started" in line for line in seen):
        _kill_session(proc.pid)
        raise AssertionError("ray start did not start in time: " + "".join(seen[-20:]))
    return proc


@pytest.fixture
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A head (4 CPUs) on loopback with its own token; nodes join with ``add_node``."""
    folder = tmp_path_factory.mktemp("ray")
    token = folder / "token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    head = _ray_start(
        ["--head", f"--port={port}", "--num-cpus=4", "--include-dashboard=false"], env
    )
    c = Cluster(f"127.0.0.1:{port}", env, [head])
    try:
        yield c
    finally:
        for node in reversed(c.nodes):
            _kill_session(node.pid)


def _project(tmp_path: Path, trials: int, workers: int, **sections) -> Path:
    """A user's folder: the training script beside the recipe (it reaches the nodes as Ray's
    working_dir), the recipe's relative ``logdir: logs``."""
    home = tmp_path / "project"
    home.mkdir(parents=True)
    shutil.copy(SCRIPTS / "fake_train.py", home / "fake_train.py")
    objective = sections.pop("objective", {"command": ["python", "fake_train.py"]})
    xy_recipe(home, objective, trials=trials, executor={"name": "ray", "workers": workers})
    raw = yaml.safe_load((home / "recipe.yaml").read_text())
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    (home / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return home


def _processes(study_dir: Path) -> dict[int, dict]:
    with sqlite3.connect(study_dir / "study.db") as db:
        rows = db.execute("SELECT number, process FROM trials").fetchall()
    return {n: json.loads(p) for n, p in rows if p}


def _seen(study_dir: Path) -> dict[int, dict]:
    return {
        int(p.parent.name.split("_")[1]): json.loads(p.read_text())
        for p in study_dir.glob("trial_*/seen.json")
    }


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


def test_a_study_runs_eight_trials_at_once_across_two_nodes(cluster, tmp_path):
    """12 trials, 8 at once, 1 CPU each on a head and a node of 4 CPUs: both nodes run trials,
    every way a script reports reaches the study, and every trial's folder is back in logs/.
    The second node imports another copy of torchtune_hp (a `ray start` from another
    environment): its trials still run, and the driver says so once."""
    import torchtune_hp

    other = tmp_path / "other_install"
    shutil.copytree(Path(torchtune_hp.__file__).parent, other / "torchtune_hp")
    with open(other / "torchtune_hp" / "errors.py", "a") as f:
        f.write("\n# an older copy\n")
    cluster.add_node(cpus=4, PYTHONPATH=str(other))
    sleep = 15.0  # the first 8 start within this on a busy 2-core machine, so they overlap
    home = _project(
        tmp_path,
        trials=12,
        workers=8,
        objective={
            "command": ["python", "fake_train.py", "--sleep", str(sleep), "--epochs", "3"],
            "metric_regex": r"valid loss\s+(?P<value>[0-9.]+)",
        },
        executor={"address": cluster.address},
        space={"how": {"type": "categorical", "choices": ["report", "json", "regex"]}},
        pruner={"name": "none"},
    )
    driver_env = {**cluster.env, "MY_TEST_PROBE": "set for the driver only"}
    result = run_cli("run", "recipe.yaml", cwd=home, env=driver_env, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    study_dir = home / "logs" / "sub"
    trials = read_trials(study_dir)
    assert [t.number for t in trials] == list(range(12))
    assert all(t.state is TrialState.COMPLETE for t in trials), [t.error for t in trials]
    seen = _seen(study_dir)
    for t in trials:
        x, y = t.params["x"], t.params["y"]
        bowl = (x - 0.3) ** 2 + (y - 0.7) ** 2
        # json: the script's last line; report and regex: the last epoch's report (1/3 added)
        expected = bowl if t.params["how"] == "json" else bowl + 1.0 / 3
        assert t.value == pytest.approx(expected, abs=1e-5), t.params
        if t.params["how"] != "json":
            assert sorted(t.intermediate) == [0, 1, 2]
        run_dir = study_dir / f"trial_{t.number:04d}"
        for name in ("stdout.log", "stderr.log", "command.json", "epochs.txt"):
            assert (run_dir / name).is_file(), f"{name} of trial {t.number} not copied back"
        # it ran in a node-local folder, not in the driver's, from the shipped working_dir
        assert Path(seen[t.number]["cwd"]) != run_dir
        argv = json.loads((run_dir / "command.json").read_text())
        assert argv[1].endswith("fake_train.py") and not argv[1].startswith(str(home))
        assert seen[t.number]["cuda"] == ""
        assert seen[t.number]["threads"] == "1"
        assert seen[t.number]["probe"] == "set for the driver only"  # as a local pool's trial
    nodes = {p["node"] for p in _processes(study_dir).values()}
    assert len(nodes) == 2, nodes
    assert result.stderr.count("runs torchtune_hp") == 1, result.stderr[-3000:]
    assert f"from {other / 'torchtune_hp'}, other code than the driver's" in result.stderr
    spans = [(s["time"], s["time"] + sleep) for s in seen.values()]
    assert _most_at_once(spans) == 8


def test_a_lost_node_costs_a_retry_and_the_study_ends_with_every_trial(cluster, tmp_path):
    """The second node is killed while two trials run on it, after they reported: those run
    again once on the head with a curve of their own (the lost attempt's reports dropped), the
    study ends with exactly its 6 trials, none twice, and no trial process is left. Trials that
    wait for the head to be free do not count the wait as their duration."""
    node = cluster.add_node(cpus=4)
    home = _project(
        tmp_path,
        trials=6,
        workers=4,
        objective={"command": ["python", "fake_train.py", "--epoch_sleep", "5", "--how", "report"]},
        executor={"address": cluster.address, "resources_per_trial": {"cpu": 2}},
        study={"name": "lost"},
        pruner={"name": "none"},
    )
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"),
        cwd=home,
        env=cluster.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    study_dir = home / "logs" / "lost"
    wait_seen(study_dir, 4, driver)
    running = {t.number for t in read_trials(study_dir) if t.state is TrialState.RUNNING}
    head = _head_node(cluster)
    on_node = {n for n, p in _processes(study_dir).items() if p["node"] != head} & running
    deadline = time.monotonic() + 60  # kill the node once its trials' first reports are in
    while not all(t.intermediate for t in read_trials(study_dir) if t.number in on_node):
        assert time.monotonic() < deadline, "the node's trials never reported"
        time.sleep(0.2)
    first_pids = seen_pids(study_dir)
    cluster.kill(node)
    _, err = driver.communicate(timeout=240)
    assert driver.returncode == 0, err[-3000:]
    trials = read_trials(study_dir)
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state is TrialState.COMPLETE for t in trials), [t.error for t in trials]
    retried = {t.number for t in trials if "its Ray host died" in (t.note or "")}
    assert retried == on_node and len(retried) == 2, (retried, on_node)
    seen = _seen(study_dir)
    for t in trials:
        assert sorted(t.intermediate) == [0, 1, 2, 3]
        assert "reported more than once" not in (t.note or ""), t.note
        if t.number not in retried:  # (a retried one ran twice: both runs count)
            # its duration is from its start on a node, not from when it was asked for
            assert t.duration_s <= t.end.timestamp() - seen[t.number]["time"] + 3.0, t
    for number in retried:
        assert (study_dir / f"trial_{number:04d}" / "lost_attempt_1" / "seen.json").is_file()
        note = next(t.note for t in trials if t.number == number)
        assert re.search(r"the lost attempt's [1-4] report\(s\) were dropped", note), note
    assert max(t.paused_s for t in trials) > 5.0  # the last two waited for the head
    assert not [pid for pid in first_pids if pid_alive(pid)]
    deadline = time.monotonic() + 30  # and no host of the study is left on the cluster
    while _hosts(cluster):
        assert time.monotonic() < deadline, "a TrialHost actor outlived its study"
        time.sleep(0.5)
    assert not _host_folders("lost"), "a node-local trial folder was left behind"


def _host_folders(study: str) -> list[Path]:
    """Folders of ``study``'s hosts that are gone, in the node's temporary folder (a host
    clears its own; a new host clears those of hosts that died, e.g. with their node)."""
    from torchtune_hp import procs
    from torchtune_hp.executors.ray_node import OWNER, PREFIX

    left = []
    for folder in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            pid, ticks = (folder / OWNER).read_text().split()
        except (OSError, ValueError):
            continue
        if str(procs.start_ticks(int(pid))) != ticks and (folder / study).exists():
            left.append(folder)
    return left


def _hosts(cluster: Cluster) -> list[int]:
    found = []
    for node in cluster.nodes:
        for pid in _session_pids(node.pid):
            try:
                if b"TrialHost" in open(f"/proc/{pid}/cmdline", "rb").read():
                    found.append(pid)
            except OSError:
                continue
    return found


def _head_node(cluster: Cluster) -> str:
    """The node id of the head (the node whose raylet runs in the head's session)."""
    for pid in _session_pids(cluster.nodes[0].pid):
        try:
            cmdline = open(f"/proc/{pid}/cmdline").read().split("\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith("raylet"):
            for arg in cmdline:
                if arg.startswith("--node_id="):
                    return arg.split("=", 1)[1]
    raise AssertionError("the head's raylet was not found")


def _two_long_trials(cluster: Cluster, tmp_path: Path, trials: int, workers: int = 2):
    """A study of ``trials`` two-minute trials, ``workers`` at a time, two CPUs each (the head
    places two), whose driver runs (stderr piped) until two have started: (its folder, its
    study folder, the driver, the trials' pids)."""
    home = _project(
        tmp_path,
        trials=trials,
        workers=workers,
        objective={"command": ["python", "fake_train.py", "--sleep", "120", "--how", "json"]},
        executor={"address": cluster.address, "resources_per_trial": {"cpu": 2}},
    )
    study_dir = home / "logs" / "sub"
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"), cwd=home, env=cluster.env, stderr=subprocess.PIPE, text=True
    )
    return home, study_dir, driver, wait_seen(study_dir, 2, driver)


def test_kill_9_of_the_driver_ends_its_trials_and_the_same_command_resumes(cluster, tmp_path):
    home, study_dir, driver, pids = _two_long_trials(cluster, tmp_path, trials=2)
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 90  # Ray ends a dead driver's actors; their guards the trials
    while [pid for pid in pids if pid_alive(pid)]:
        assert time.monotonic() < deadline, "a trial kept running after its driver died"
        time.sleep(0.5)
    raw = yaml.safe_load((home / "recipe.yaml").read_text())
    raw["objective"]["command"] = ["python", "fake_train.py", "--sleep", "0.2", "--how", "json"]
    (home / "recipe.yaml").write_text(yaml.safe_dump(raw))
    result = run_cli("run", "recipe.yaml", cwd=home, env=cluster.env, timeout=200)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = read_trials(study_dir)
    assert sum(t.state is TrialState.COMPLETE for t in trials) == 2
    assert sum(t.interrupted for t in trials) == 2  # the two killed with their driver


def test_sigterm_stops_every_ray_trial_at_once(cluster, tmp_path):
    """Two trials run, a third waits for the cluster to place it; SIGTERM stops all three.
    The third never ran: the time it waited is not its duration (a helper's stopped trials
    that were never placed had 13.9 s each)."""
    _, study_dir, driver, pids = _two_long_trials(cluster, tmp_path, trials=4, workers=3)
    time.sleep(3.0)  # the third has waited that much longer
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=90)
    assert driver.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    assert not [pid for pid in pids if pid_alive(pid)]
    trials = read_trials(study_dir)
    assert len(trials) == 3 and all(t.interrupted for t in trials)
    ran = set(_seen(study_dir))
    assert len(ran) == 2
    for t in trials:  # their last output was copied back as they stopped
        assert (study_dir / f"trial_{t.number:04d}" / "stderr.log").is_file() == (t.number in ran)
        assert t.duration_s is not None and (t.duration_s > 3.0) == (t.number in ran), t


ENDS_AT_ONCE = """
import argparse, json, os, sys
import torchtune_hp
p = argparse.ArgumentParser()
p.add_argument("--marker")
a, _ = p.parse_known_args()
for step in range(3):
    torchtune_hp.report(loss=1.0 / (step + 1), step=step)
print(json.dumps({"loss": 0.125}), flush=True)
with open(a.marker + ".part", "w") as f:
    f.write(str(os.getpid()))
os.replace(a.marker + ".part", a.marker)
os._exit(0)
"""


def test_a_stop_just_after_a_ray_trial_ended_keeps_its_result(cluster, tmp_path):
    """SIGTERM to the driver between a trial's end and the driver hearing of it (a poll, up to a
    second or so; here the driver is held with SIGSTOP meanwhile): the trial, whose result was
    on its way, was recorded interrupted and run again. The stop now reads the poll in flight
    and the host's own word that the trial had ended by itself, and it stays COMPLETE."""
    marker = tmp_path / "ended"
    home = _project(
        tmp_path,
        trials=3,
        workers=1,
        objective={"command": ["python", "ends.py", "--marker", str(marker)]},
        executor={"address": cluster.address},
    )
    (home / "ends.py").write_text(ENDS_AT_ONCE)
    study_dir = home / "logs" / "sub"
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"), cwd=home, env=cluster.env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline and driver.poll() is None, "the first trial did not end"
        time.sleep(0.005)
    driver.send_signal(signal.SIGSTOP)  # the driver hears nothing more until it is stopped
    while pid_alive(int(marker.read_text())):
        time.sleep(0.01)
    time.sleep(1.0)  # its guard and host see it end
    driver.send_signal(signal.SIGTERM)
    driver.send_signal(signal.SIGCONT)
    _, err = driver.communicate(timeout=90)
    assert driver.returncode == 128 + signal.SIGTERM, err[-3000:]
    first = read_trials(study_dir)[0]
    assert first.state is TrialState.COMPLETE and first.value == 0.125, first.error
    assert sorted(first.intermediate) == [0, 1, 2]


def test_a_cluster_that_goes_away_stops_the_study_with_one_clear_error(cluster, tmp_path):
    """The head node dies (or ``ray stop``) while trials run: the study used to promise each
    lost trial a run on another node, go silent for a minute, and be ended by Ray's own
    'Failed to connect to GCS within 60 seconds' (exit 1, trials left RUNNING). Then a user
    saw exit 2 come 21 s after the head died: Ray's disconnect waits on the gone cluster."""
    _, study_dir, driver, pids = _two_long_trials(cluster, tmp_path, trials=3)
    started = time.monotonic()
    cluster.kill(cluster.nodes[0])  # the head: its control store, its raylet, the hosts
    _, err = driver.communicate(timeout=90)
    assert driver.returncode == 2, err[-3000:]
    took = time.monotonic() - started
    # not Ray's minute, nor Ray's 15 s disconnect from the gone cluster (8 s in all before)
    assert took < 6, took
    assert "error: the Ray cluster at" in err and "is gone" in err and "Traceback" not in err
    trials = read_trials(study_dir)
    assert [(t.state, t.interruption) for t in trials] == [
        (TrialState.FAILED, Interruption.STOPPED)
    ] * 2
    assert all(t.error == "interrupted: the Ray cluster is gone" for t in trials)
    deadline = time.monotonic() + 30  # their guards end them once their hosts are gone
    while [pid for pid in pids if pid_alive(pid)]:
        assert time.monotonic() < deadline, "a trial outlived its cluster"
        time.sleep(0.5)


def test_pruning_and_function_objectives_on_a_private_cluster(tmp_path):
    """``address: local`` starts a cluster for the study and ends it (2 CPUs here, so of 3
    workers one waits to be placed); a function objective runs on it, and the median rule
    prunes through Ray's messages."""
    home = tmp_path / "project"
    home.mkdir()
    (home / "obj.py").write_text(
        "import torchtune_hp\n"
        "def train(trial):\n"
        "    x = trial.params['x']\n"
        "    for step in range(8):\n"
        "        if torchtune_hp.report(val_loss=x + 1.0 / (step + 1), step=step):\n"
        "            return None\n"
        "    return x\n"
    )
    (home / "recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "study": {"name": "f", "trials": 10, "seed": 3},
                "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
                "sampler": {"name": "random"},
                "pruner": {"name": "median", "n_startup": 2, "n_warmup": 1},
                "objective": {"function": "obj.py:train"},
                "executor": {"name": "ray", "address": "local", "workers": 3},
            }
        )
    )
    mark = f"TORCHTUNE_HP_TEST_MARK={secrets.token_hex(8)}"
    result = run_cli("run", "recipe.yaml", cwd=home, timeout=280, env=dict([mark.split("=")]))
    assert result.returncode == 0, result.stderr[-3000:]
    trials = read_trials(home / "logs" / "f")
    assert len(trials) == 10
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert pruned and complete
    for t in complete:
        assert t.value == pytest.approx(t.params["x"])
        assert sorted(t.intermediate) == list(range(8))
    for t in pruned:  # stopped at the step the pruner answered, not at the end
        assert max(t.intermediate) < 7
    deadline = time.monotonic() + 30  # nothing the driver started (its cluster) outlives it
    while _marked(mark):
        assert time.monotonic() < deadline, (
            f"the private cluster outlived its study: {_marked(mark)}"
        )
        time.sleep(0.5)


def test_sigterm_while_a_private_cluster_starts_is_a_clean_stop(tmp_path):
    """A helper's SIGTERM during ``address: local``'s start-up (ray.init takes seconds) exited
    15 with nothing said: Ray's own handler, in force while it starts, turned it into
    sys.exit(15). It is exit 143 with the one line, as after start-up, and the cluster goes."""
    home = tmp_path / "project"
    home.mkdir()
    (home / "obj.py").write_text("def train(trial):\n    return trial.params['x']\n")
    recipe = {
        "study": {"name": "s", "trials": 2},
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "objective": {"function": "obj.py:train"},
        "executor": {"name": "ray", "address": "local"},
    }
    (home / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    mark = secrets.token_hex(8)
    env = {**os.environ, "TORCHTUNE_HP_TEST_MARK": mark}
    driver = subprocess.Popen(
        cli_cmd("run", "recipe.yaml"), cwd=home, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not any(c.startswith(("gcs_server", "raylet")) for c in _marked(mark)):
        assert time.monotonic() < deadline and driver.poll() is None, "no cluster started"
        time.sleep(0.1)
    driver.send_signal(signal.SIGTERM)  # the cluster's processes run: ray.init has not ended
    _, err = driver.communicate(timeout=90)
    assert driver.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    while [c for c in _marked(mark) if c != "python3"]:
        assert time.monotonic() < deadline + 30, f"the cluster outlived its study: {_marked(mark)}"
        time.sleep(0.5)


def _marked(mark: str) -> list[str]:
    """Processes whose environment holds ``mark``: the driver's and what it started."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and mark.encode() in open(f"/proc/{entry}/environ", "rb").read():
                found.append(open(f"/proc/{entry}/comm").read().strip())
        except OSError:
            continue
    return found


def test_cluster_problems_are_one_clear_error_before_any_trial(cluster, tmp_path):
    home = _project(tmp_path, trials=2, workers=1)
    study_dir = home / "logs" / "sub"
    unreachable = f"127.0.0.1:{_free_port()}"
    began = time.monotonic()
    result = run_cli("run", "recipe.yaml", f"executor.address={unreachable}", cwd=home)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - began < 60
    assert "executor.address" in result.stderr and "cannot be reached" in result.stderr
    result = run_cli("run", "recipe.yaml", "executor.address=127.0.0.1", cwd=home)
    assert result.returncode == 2, result.stderr
    assert "executor.address: expected 'auto', 'local', host:port" in result.stderr
    assert "got '127.0.0.1'" in result.stderr
    result = run_cli(
        "run",
        "recipe.yaml",
        f"executor.address={cluster.address}",
        "executor.resources_per_trial.gpu=1",
        cwd=home,
        env=cluster.env,
    )
    assert result.returncode == 2, result.stderr
    assert "executor.resources_per_trial" in result.stderr
    assert re.search(r"no node .* has that much", result.stderr)
    result = run_cli("run", "recipe.yaml", "executor.devices=[0]", cwd=home)
    assert result.returncode == 2 and "executor.devices" in result.stderr
    assert not study_dir.exists()


def test_a_ray_client_join_that_times_out_says_to_try_the_token(monkeypatch):
    """A helper's ``ray://`` join to a cluster with token authentication (Ray's default) timed
    out after 30 s with 'ray client connection timeout' and nothing more: the Ray Client server
    refused it for want of the token, which host:port joins already hinted at."""
    from torchtune_hp.executors.ray_pool import _token_hint

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    timeout = ConnectionError("ray client connection timeout")
    assert "RAY_AUTH_MODE=token" in _token_hint("ray://10.0.0.5:10001", timeout)
    refused = ConnectionError("Failed to connect to GCS")
    assert "RAY_AUTH_MODE=token" in _token_hint("10.0.0.5:6379", refused)
    assert _token_hint("10.0.0.5:6379", timeout) == ""  # a GCS join times out for other reasons
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert _token_hint("ray://10.0.0.5:10001", timeout) == ""  # it is set: something else


def test_without_ray_installed_asking_for_it_says_how_to_install(tmp_path):
    home = _project(tmp_path, trials=2, workers=1)
    hide = tmp_path / "no_ray" / "ray"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    result = run_cli("run", "recipe.yaml", cwd=home, env={"PYTHONPATH": str(hide.parent)})
    assert result.returncode == 2, result.stderr
    assert "pip install 'torchtune_hp[ray]'" in result.stderr
    assert not (home / "logs").exists()


def test_lightning_cli_and_tensorboard_reporting_on_the_cluster(cluster, tmp_path):
    """The zero-code LightningCLI path (TuneCallback reports each epoch) with the script's
    sibling module shipped to the node, and a script that only writes TensorBoard tags: the
    same results as locally, their event files back in logs/. The built-in recipe switches to
    Ray with one override (its ``devices: auto`` is the default and does not stand in the way)."""
    home = tmp_path / "cli"
    copied = run_cli("cp", "digits_cli", str(home) + "/", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    recipe = home / "digits_cli.yaml"
    recipe.write_text(recipe.read_text().replace("max_epochs=20", "max_epochs=3"))
    result = run_cli(
        "run",
        "digits_cli.yaml",
        "executor.name=ray",
        f"executor.address={cluster.address}",
        "study.trials=2",
        "pruner.name=none",
        cwd=home,
        env=cluster.env,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study_dir = home / "logs" / "digits_cli"
    trials = read_trials(study_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.error for t in trials]
    for t in trials:
        assert sorted(t.intermediate) == [0, 1, 2]
        assert t.value == pytest.approx(t.intermediate[2])
        assert list((study_dir / f"trial_{t.number:04d}").glob("events.out.tfevents.*"))

    # a data folder beside the recipe that .gitignore leaves out of what Ray ships: it was
    # given as a path in the shipped folder, where it did not exist; now read where it is
    # (one machine here), with a warning that other nodes lack it
    command = ["python", "fake_train.py", "--how", "tensorboard", "--data", "data"]
    tb_home = _project(
        tmp_path / "tb",
        trials=2,
        workers=2,
        objective={"command": [*command, "--conf", "conf"]},
        executor={"address": cluster.address},
        study={"metric": "valid/loss"},
    )
    for folder in ("data", "conf"):
        (tb_home / folder).mkdir()
        (tb_home / folder / "file.txt").write_text(folder)
    (tb_home / ".gitignore").write_text("data/\n")
    result = run_cli("run", "recipe.yaml", cwd=tb_home, env=cluster.env, timeout=200)
    assert result.returncode == 0, result.stderr[-3000:]
    said = f"objective.command: data is left out of the folder Ray ships to its nodes ({tb_home}"
    assert said in result.stderr and "conf is left out" not in result.stderr
    seen = _seen(tb_home / "logs" / "sub")
    for t in read_trials(tb_home / "logs" / "sub"):
        x, y = t.params["x"], t.params["y"]
        assert t.value == pytest.approx((x - 0.3) ** 2 + (y - 0.7) ** 2 + 1.0 / 4, abs=1e-5)
        given = seen[t.number]["args"]
        assert given["data"] == str(tb_home / "data")  # where it is: it was not shipped
        assert given["conf"] != str(tb_home / "conf") and given["conf"].endswith("/conf")


def test_a_paused_trial_resumes_on_ray_with_its_checkpoint(cluster, tmp_path):
    """``pruner: {name: gp, resume: true}`` on a cluster: each run of a trial starts in a
    fresh folder on its node, so a resumed run finds its checkpoint only because the driver
    carried it there from the run that paused (the script fails otherwise)."""
    from test_resume import check_resumed, resume_project

    home = tmp_path / "project"
    resume_project(home, 10, {"name": "ray", "address": cluster.address, "workers": 2})
    result = run_cli("run", "ft.yaml", cwd=home, env=cluster.env, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    check_resumed(home / "logs" / "ft", 10)
