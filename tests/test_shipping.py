"""What ships is what is tested: the wheel's contents, the GPU mask rule, parallel trials that
report through one trial object, DDP followers, grids under interruptions. Real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import cli_cmd, function_recipe, read_trials, run_cli, xy_recipe

from torchtune_hp import Float, Study, TrialState
from torchtune_hp.errors import StorageError
from torchtune_hp.executors.devices import driver_gpus
from torchtune_hp.storage import Storage

ROOT = Path(__file__).parent.parent
SCRIPTS = Path(__file__).parent / "scripts"
FAKE = str(SCRIPTS / "fake_train.py")


def recipe(folder: Path, objective: dict, trials: int = 4, **sections) -> Path:
    return xy_recipe(folder, objective, trials, **sections)


def trials_of(folder: Path, name: str = "sub") -> list:
    return read_trials(folder / "logs" / name)


def seen(folder: Path, number: int) -> dict:
    return json.loads((folder / "logs" / "sub" / f"trial_{number:04d}" / "seen.json").read_text())


# -- 1. the package as users install it ----------------------------------------------------------
def test_the_wheel_holds_every_module_and_recipe(tmp_path):
    """Built from a copy of the source (a build writes build/ and egg-info beside it)."""
    src = tmp_path / "src"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if listed.returncode != 0:
        pytest.skip("needs the git checkout")
    for name in listed.stdout.splitlines():
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():
            target.symlink_to(os.readlink(ROOT / name))
        elif (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "torchtune_hp"
    expected = {
        str(p.relative_to(ROOT))
        for p in package.rglob("*")
        if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts
    }
    assert expected - names == set()
    assert (
        "torchtune_hp/executors/pool.py" in names
        and "torchtune_hp/recipes/digits_mlp.yaml" in names
    )


def test_scripts_are_found_beside_the_recipe_not_in_the_current_folder(tmp_path):
    """Each trial runs in its own folder: ``python -m train`` beside the recipe is put on the
    trials' PYTHONPATH, and a script found only in the folder the command is typed in is
    refused before any trial (it passed the check and then failed every trial)."""
    script = (
        "import sys, json\n"
        "print(json.dumps({'loss': float(sys.argv[sys.argv.index('--x') + 1])}))\n"
    )
    (tmp_path / "recipes").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "recipes" / "train.py").write_text(script)
    recipe(tmp_path / "recipes", {"command": ["python", "-m", "train"]}, trials=2)
    result = run_cli("run", "../recipes/recipe.yaml", cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr
    trials = trials_of(tmp_path / "work")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    (tmp_path / "recipes" / "train.py").rename(tmp_path / "work" / "train.py")
    recipe(tmp_path / "recipes", {"command": ["python", "train.py"]}, trials=3)
    for verb in ("validate", "run"):
        refused = run_cli(verb, "../recipes/recipe.yaml", cwd=tmp_path / "work")
        assert refused.returncode == 2, refused.stderr
        assert "'train.py' does not exist beside the recipe" in refused.stderr


def test_a_folder_beside_the_recipe_is_made_absolute_like_a_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "offset.txt").write_text("0.25")
    (tmp_path / "train.py").write_text(
        "import argparse, json, os\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--data'); p.add_argument('--x', type=float); p.add_argument('--y')\n"
        "a = p.parse_args()\n"
        "offset = float(open(os.path.join(a.data, 'offset.txt')).read())\n"
        "print(json.dumps({'loss': a.x + offset}))\n"
    )
    recipe(tmp_path, {"command": ["python", "train.py", "--data", "data"]}, trials=2)
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for t in trials_of(tmp_path):
        assert t.state is TrialState.COMPLETE and t.value == pytest.approx(t.params["x"] + 0.25)
        command = json.loads(
            (tmp_path / "logs" / "sub" / f"trial_{t.number:04d}" / "command.json").read_text()
        )
        assert command[3] == str(tmp_path / "data")


# -- 2. GPUs: only the driver's own, in the driver's own terms -----------------------------------
def test_the_driver_mask_decides_which_gpus_auto_hands_out(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert driver_gpus(2) == ["2", "3"]
    assert driver_gpus(1) == ["2"]  # CUDA reads a mask up to its first device that is not there
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaa,GPU-bbb")
    assert driver_gpus(2) == ["GPU-aaa", "GPU-bbb"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert driver_gpus(2) == ["0", "1"]
    assert driver_gpus(0) == []


def test_trials_get_devices_from_the_drivers_visible_set(tmp_path):
    """Under CUDA_VISIBLE_DEVICES=5,7 the list [1, 0] means the driver's GPUs 7 and 5."""
    masked = {"CUDA_VISIBLE_DEVICES": "5,7"}
    recipe(
        tmp_path,
        {"command": ["python", FAKE, "--how", "json", "--sleep", "0.5"]},
        executor={"workers": 2, "devices": [1, 0]},
    )
    result = run_cli("run", "recipe.yaml", cwd=tmp_path, env=masked)
    assert result.returncode == 0, result.stderr
    assert {seen(tmp_path, t.number)["cuda"] for t in trials_of(tmp_path)} == {"5", "7"}
    bad = run_cli("validate", "recipe.yaml", "executor.devices=[2]", cwd=tmp_path, env=masked)
    assert (
        bad.returncode == 2
        and "executor.devices" in bad.stderr
        and "leaves the driver 2 GPUs" in bad.stderr
        and bad.stderr.rstrip().endswith("(set on the command line)")  # not the file's doing
    )
    if driver_gpus():
        return  # the rest is about a machine without a GPU
    shutil.rmtree(tmp_path / "logs")
    auto = run_cli("run", "recipe.yaml", "executor.devices=auto", cwd=tmp_path, env=masked)
    assert auto.returncode == 0, auto.stderr
    assert {seen(tmp_path, t.number)["cuda"] for t in trials_of(tmp_path)} == {""}


def test_an_objective_is_told_its_devices(tmp_path):
    (tmp_path / "obj.py").write_text(
        "import json, os\n"
        "def train(trial):\n"
        "    out = os.path.join(os.path.dirname(__file__), f'dev_{trial.number}.json')\n"
        "    json.dump([trial.devices, trial.accelerator], open(out, 'w'))\n"
        "    return trial.params['x']\n"
    )
    masked = {"CUDA_VISIBLE_DEVICES": "5,7"}
    recipe(tmp_path, {"function": "obj.py:train"}, trials=1, executor={"devices": [1]})
    assert run_cli("run", "recipe.yaml", cwd=tmp_path, env=masked).returncode == 0
    assert json.loads((tmp_path / "dev_0.json").read_text()) == [[1], "gpu"]  # in-process
    recipe(tmp_path, {"function": "obj.py:train"}, trials=2, executor={"devices": "cpu"})
    shutil.rmtree(tmp_path / "logs")
    assert run_cli("run", "recipe.yaml", cwd=tmp_path).returncode == 0
    assert json.loads((tmp_path / "dev_0.json").read_text()) == [[], "cpu"]
    recipe(
        tmp_path, {"function": "obj.py:train"}, trials=2, executor={"workers": 2, "devices": [0, 1]}
    )
    shutil.rmtree(tmp_path / "logs")
    assert run_cli("run", "recipe.yaml", cwd=tmp_path, env=masked).returncode == 0
    for n in (0, 1):  # a worker process sees its one GPU as device 0
        assert json.loads((tmp_path / f"dev_{n}.json").read_text()) == [[0], "gpu"]


def test_the_built_in_mlp_falls_back_to_the_cpu_where_its_gpu_is_not_visible(tmp_path):
    """README: the built-in recipes train on the trial's GPU when it has one and on the CPU
    otherwise. Told of GPU 0 under a mask that hides every GPU, digits_mlp failed each trial
    ('No supported gpu backend found!')."""
    if driver_gpus():
        pytest.skip("about a machine where the mask hides every GPU")
    result = run_cli(
        "run",
        "digits_mlp",
        "study.trials=1",
        "train.max_epochs=1",
        "pruner.name=none",
        "executor.devices=[0]",
        f"logdir={tmp_path / 'logs'}",
        cwd=tmp_path,
        env={"CUDA_VISIBLE_DEVICES": "7"},
    )
    assert result.returncode == 0, result.stderr
    assert "names GPUs, but none is visible here" in result.stderr
    (trial,) = read_trials(tmp_path / "logs" / "digits_mlp")
    assert trial.state is TrialState.COMPLETE and 0 < trial.value < 3


# -- 3. parallel trials report through one trial object ------------------------------------------
ONE_OBJECT = """
import torchtune_hp
from torchtune_hp.executors.remote import current_trial


def train(trial):
    assert current_trial() is trial, "report() and the objective see different trials"
    for epoch in range(6):
        loss = trial.params["x"] * 10 / (epoch + 1)
        if epoch % 2:
            trial.report(loss, epoch)
            stop = trial.should_prune()
        else:
            stop = torchtune_hp.report(loss=loss, step=epoch)
            assert stop == trial.should_prune()
        if stop:
            break
    return loss
"""


def test_report_and_the_trial_agree_in_worker_processes(tmp_path):
    (tmp_path / "obj.py").write_text(ONE_OBJECT)
    recipe(
        tmp_path,
        {"function": "obj.py:train"},
        trials=6,
        executor={"workers": 2, "devices": "cpu"},
        pruner={"name": "asha", "min_resource": 1, "eta": 2},
    )
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = trials_of(tmp_path)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [
        t.error for t in trials
    ]
    assert any(t.state is TrialState.PRUNED for t in trials)
    for t in trials:
        lines = (tmp_path / "logs" / "sub" / f"trial_{t.number:04d}" / "report.jsonl").read_text()
        seqs = [json.loads(line)["seq"] for line in lines.splitlines()]
        assert seqs == list(range(1, len(seqs) + 1))  # one sequence for both ways of reporting
        assert len(t.intermediate) == len(seqs)
        if t.state is TrialState.PRUNED:
            assert len(seqs) < 6


def test_a_template_with_a_format_spec(tmp_path):
    recipe(tmp_path, {"command": ["python", FAKE, "--x={x:.3f}", "--how", "json"]}, trials=2)
    result = run_cli("run", "recipe.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for t in trials_of(tmp_path):
        assert seen(tmp_path, t.number)["args"]["x"] == f"{t.params['x']:.3f}"
    bad = run_cli(
        "validate", "recipe.yaml", "objective.command=[python, x.py, '--w={x:d}']", cwd=tmp_path
    )
    assert bad.returncode == 2 and "cannot be filled in" in bad.stderr, bad.stderr


# -- 4. DDP followers and the grid ---------------------------------------------------------------
def _follow(tmp_path: Path, ending: str, stop=None) -> tuple[float, subprocess.Popen]:
    """Start rank 0, then a follower; end rank 0 (by ``ending`` or ``stop``); return how long
    the follower outlived it."""
    script = str(SCRIPTS / "rank_study.py")
    env0 = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "NODE_RANK")}
    leader = subprocess.Popen(
        [sys.executable, script, str(tmp_path), ending], env=env0, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "0.txt").exists():
        assert time.monotonic() < deadline and leader.poll() is None
        time.sleep(0.05)
    follower = subprocess.Popen(
        [sys.executable, script, str(tmp_path), ending],
        env={**env0, "LOCAL_RANK": "1"},
        stderr=subprocess.PIPE,
    )
    while not (tmp_path / "1.txt").exists():
        assert time.monotonic() < deadline and follower.poll() is None, follower.stderr.read()
        time.sleep(0.05)
    if stop is not None:
        stop(leader)
    leader.wait(timeout=60)
    ended = time.monotonic()
    assert follower.wait(timeout=60) == 0, follower.stderr.read()
    return time.monotonic() - ended, leader


@pytest.mark.parametrize(
    "ending, stop",
    [
        ("grid", None),
        ("raise", None),
        ("wait", lambda p: p.send_signal(signal.SIGINT)),
        ("wait", lambda p: p.kill()),
    ],
    ids=["grid-exhausted", "exception", "ctrl-c", "kill-9"],
)
def test_followers_end_within_seconds_of_rank_0(tmp_path, ending, stop):
    outlived, leader = _follow(tmp_path, ending, stop)
    assert outlived < 5.0
    followed = (tmp_path / "1.txt").read_text().split()
    assert set(followed) <= set((tmp_path / "0.txt").read_text().split())


def test_an_in_memory_study_in_a_ddp_rank_is_refused_clearly():
    code = "from torchtune_hp import Float, Study; Study('x', {'x': Float(0, 1)}, logdir=None)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "LOCAL_RANK": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Give the study a logdir" in result.stderr


GRID_OBJECTIVE = "import time\n\ndef train(trial):\n    time.sleep(1.5)\n    return 1.0\n"


def _interrupt_once(tmp_path: Path, twice: bool = False) -> None:
    db = tmp_path / "logs" / "grid" / "study.db"
    proc = subprocess.Popen(cli_cmd("run", "grid.yaml"), cwd=tmp_path, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    before = len(trials_of(tmp_path, "grid")) if db.exists() else 0
    while True:
        assert time.monotonic() < deadline and proc.poll() is None
        try:
            if any(t.state is TrialState.RUNNING for t in trials_of(tmp_path, "grid")[before:]):
                break
        except FileNotFoundError:  # not created yet
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    if twice:
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # a second Ctrl-C during the cleanup
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"Traceback" not in err, err


def test_every_grid_point_runs_exactly_once_whatever_the_interruptions(tmp_path):
    choices = {"c": {"type": "categorical", "choices": ["a", "b", "c"]}}
    sampler = {"name": "grid", "shuffle": False}
    function_recipe(tmp_path, GRID_OBJECTIVE, "grid", 10, choices, "grid.yaml", sampler=sampler)
    _interrupt_once(tmp_path)
    _interrupt_once(tmp_path, twice=True)  # the retry is interrupted too, with two Ctrl-Cs
    final = run_cli("run", "grid.yaml", cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    trials = trials_of(tmp_path, "grid")
    complete = sorted(t.params["c"] for t in trials if t.state is TrialState.COMPLETE)
    assert complete == ["a", "b", "c"]
    assert all(t.state is not TrialState.RUNNING for t in trials)


def test_a_study_that_fails_to_open_leaves_no_lock_behind(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    Storage(folder / "study.db").conn.execute("PRAGMA user_version=99")
    for _ in range(2):  # the same error both times, not "being run by another process"
        with pytest.raises(StorageError, match="schema version 99 is newer"):
            Study("s", {"x": Float(0, 1)}, logdir=tmp_path)


@pytest.mark.parametrize("kind", ["sampler", "pruner"])
def test_readme_tables_list_every_option_the_code_accepts(kind):
    """The README's sampler and pruner tables are where a user looks an option up: each row
    names exactly the options its class takes (a new option must be added there too)."""
    from torchtune_hp.options import accepted_options
    from torchtune_hp.pruners import PRUNERS, pruner_class
    from torchtune_hp.samplers import SAMPLERS, sampler_options

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index(f"| `{kind}.name` |") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        name, _, options = [cell.strip() for cell in line.strip("|").split(" | ")]
        # the option names: backticked words starting each item, defaults in brackets aside
        listed = re.findall(r"(?:^|, )`(\w+)`", re.sub(r"\([^()]*\)", "", options))
        rows[name.split("`")[1]] = set(listed)
    if kind == "sampler":
        expected = {name: set(sampler_options(name)) for name in SAMPLERS}
    else:
        expected = {n: set(accepted_options(pruner_class(n).__init__, ("mode",))) for n in PRUNERS}
    assert rows == expected


def test_the_readme_recipe_is_the_shipped_digits_mlp():
    """The README's annotated recipe is the built-in one, to the letter: it drifted once (an
    ASHA recipe with a parameter the shipped train() refuses), and its commented optional keys
    and comments were missing from what ``torchtune-hp cp`` copies, where the README says to
    uncomment them."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```yaml\n# torchtune-hp run digits_mlp\n") + len("```yaml\n")
    block = readme[start : readme.index("```\n", start)]
    shipped = ROOT / "torchtune_hp" / "recipes" / "digits_mlp.yaml"
    assert block == shipped.read_text()
