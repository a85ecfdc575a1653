"""A new user's first hour, step by step: starting over, exit codes, messages that say what to
do, and thread settings that are respected. Real CLI runs in a folder of the user's own."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import function_recipe, run_cli

from torchtune_hp import Float, Study, load_study

SCRIPTS = Path(__file__).parent / "scripts"
FAKE = str(SCRIPTS / "fake_train.py")

BROKEN = "def train(trial):\n    raise ModuleNotFoundError(\"No module named 'lightnin'\")\n"
FIXED = "def train(trial):\n    return (trial.params['x'] - 0.3) ** 2\n"


def study_files(folder: Path, objective: str, trials: int = 4, **extra) -> None:
    function_recipe(folder, objective, "first", trials, metric="loss", **extra)


def test_a_mistake_then_a_fix_then_starting_over(tmp_path):
    study_files(tmp_path, BROKEN)
    failed = run_cli("run", "r.yaml", cwd=tmp_path)
    assert failed.returncode == 1
    assert "No module named 'lightnin'" in failed.stderr and "--fresh" in failed.stderr
    (tmp_path / "obj.py").write_text(FIXED)
    resumed = run_cli("run", "r.yaml", cwd=tmp_path)  # goes on: 3 failed + 1 more
    assert resumed.returncode == 0, resumed.stderr
    trials = json.loads(run_cli("trials", "logs/first", "--format", "json", cwd=tmp_path).stdout)
    assert [t["state"] for t in trials] == ["FAILED"] * 3 + ["COMPLETE"]
    # a --fresh run refused as bad input leaves the study where it was (it moved it first)
    typo = run_cli("run", "r.yaml", "--fresh", "objective.function=obj.py:trian", cwd=tmp_path)
    assert typo.returncode == 2 and "did you mean 'train'" in typo.stderr
    assert "moved" not in typo.stderr and not list((tmp_path / "logs").glob("first.old-*"))
    fresh = run_cli("run", "r.yaml", "--fresh", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    (old,) = (tmp_path / "logs").glob("first.old-*")
    assert "moved the old study to" in fresh.stderr and str(old) in fresh.stderr
    again = json.loads(run_cli("trials", "logs/first", "--format", "json", cwd=tmp_path).stdout)
    assert [t["state"] for t in again] == ["COMPLETE"] * 4
    kept = json.loads(run_cli("trials", str(old), "--format", "json").stdout)
    assert kept == trials  # nothing of the old study was lost
    # TensorBoard's study column tells the two apart (a helper found both rows saying
    # 'first': filtering on it mixed the moved-aside trials into the new study's)
    assert {study_column(t) for t in (tmp_path / "logs" / "first").glob("trial_*")} == {"first"}
    assert {study_column(t) for t in old.glob("trial_*")} == {old.name}
    assert load_study(old).name == old.name  # a study's name is its folder's (it said 'first')
    # a copied (or renamed) folder run under its new name is one study in TensorBoard too
    shutil.copytree(old, tmp_path / "logs" / "copy")
    more = run_cli("run", "r.yaml", "study.name=copy", "study.trials=5", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert {study_column(t) for t in (tmp_path / "logs" / "copy").glob("trial_*")} == {"copy"}
    assert load_study(tmp_path / "logs" / "copy").name == "copy"
    # run first with TensorBoard off, the copy is still relabelled when it is on again
    shutil.copytree(old, tmp_path / "logs" / "dark")
    for more in (["tensorboard.enabled=false", "study.trials=5"], ["study.trials=6"]):
        again = run_cli("run", "r.yaml", "study.name=dark", *more, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
    assert {study_column(t) for t in (tmp_path / "logs" / "dark").glob("trial_*")} == {"dark"}


def study_column(trial_dir: Path) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(trial_dir / "hparams"))
    acc.Reload()
    content = acc.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content
    return metadata.parse_session_start_info_plugin_data(content).hparams["study"].string_value


def test_exit_codes_tell_a_study_that_produced_nothing(tmp_path):
    study_files(tmp_path, BROKEN)
    assert run_cli("run", "r.yaml", "study.fail_fast=0", cwd=tmp_path).returncode == 1
    best = run_cli("best", "logs/first", cwd=tmp_path)
    assert best.returncode == 1 and best.stderr.startswith("error: logs/first: no COMPLETE trial")
    assert run_cli("best", "logs/nowhere", cwd=tmp_path).returncode == 2
    assert run_cli("run", "r.yaml", "study.trials=zero", cwd=tmp_path).returncode == 2


def test_a_study_whose_pruner_stopped_every_trial_is_not_told_to_fix_anything(tmp_path):
    """A user's short study with a strict pruner: every trial PRUNED, none failed, and the
    run ended saying "after a fix add study.trials=18". Nothing needs a fix there."""
    stopped = (
        "import torchtune_hp as hp\n\ndef train(trial):\n"
        "    trial.report(trial.params['x'], 0)\n    raise hp.TrialPruned()\n"
    )
    study_files(tmp_path, stopped, trials=2)
    result = run_cli("run", "r.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "no trial completed" in result.stderr and "fix" not in result.stderr
    assert (
        "The pruner stopped every trial before its end (PRUNED, nothing failed): ask for "
        "more trials (study.trials=12" in result.stderr
    )


def test_the_full_error_is_one_command_away(tmp_path):
    study_files(tmp_path, BROKEN, trials=1)
    result = run_cli("run", "r.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert "torchtune-hp trials" in result.stderr and "--trial 0" in result.stderr
    assert "add study.trials=11 to go on" in result.stderr  # its one trial is used: not a rerun
    detail = run_cli("trials", "logs/first", "--trial", "0", cwd=tmp_path)
    assert detail.returncode == 0
    assert "Traceback (most recent call last)" in detail.stdout and "obj.py" in detail.stdout
    missing = run_cli("trials", "logs/first", "--trial", "7", cwd=tmp_path)
    assert missing.returncode == 2 and "no trial 7 (trials 0 to 0)" in missing.stderr
    Study("empty", {"x": Float(0.0, 1.0)}, logdir=tmp_path / "logs").close()
    none = run_cli("trials", "logs/empty", "--trial", "0", cwd=tmp_path)
    assert none.returncode == 2 and "no trial 0 (the study has no trials yet)" in none.stderr


def test_a_regex_that_never_matches_shows_the_lines_it_missed(tmp_path):
    """The common slip: one space in the regex, two in the script's output."""
    (tmp_path / "lm.py").write_text(
        "import logging\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "for epoch in range(2):\n"
        "    print(f'| end of epoch {epoch} | valid loss  6.7{epoch} | valid ppl 800.0')\n"
        "    print('| epoch 1 | 100/200 batches | lr 20.0 | loss 7.12')\n"
        "    logging.info('valid loss 6.5%d', epoch)  # to stderr, as logging does\n"
    )
    recipe = {
        "study": {"name": "lm", "metric": "val_loss", "trials": 1, "seed": 0, "fail_fast": 0},
        "space": {"lr": {"type": "float", "low": 0.1, "high": 20.0, "log": True}},
        "objective": {
            "command": ["python", "lm.py"],
            "metric_regex": "valid loss (?P<value>[0-9.]+)",
        },
        "logdir": "logs",
    }
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(recipe))
    assert run_cli("run", "lm.yaml", cwd=tmp_path).returncode == 1
    (trial,) = json.loads(run_cli("trials", "logs/lm", "--format", "json", cwd=tmp_path).stdout)
    assert "the closest lines: ['| end of epoch 0 | valid loss  6.70" in trial["error"]
    assert "it matches 2 on stderr, where it is not read (Python's logging" in trial["error"]
    assert "the last 'valid loss 6.51'" in trial["error"]
    assert "objective/" not in trial["error"]  # only what the script itself wrote


@pytest.mark.parametrize(
    "overrides, key, phrase",
    [
        (["study.trails=5"], "study.trails", "did you mean 'trials'"),
        (["pruner.name=asha", "pruner.min_resourse=3"], "pruner.min_resourse", "did you mean"),
        (["pruner.name=asha", "pruner.min_resource=one"], "pruner.min_resource", "got 'one'"),
        (["space.x.lw=0.1"], "space.x.lw", "did you mean 'low'"),
        (["space.x.type=flaot"], "space.x.type", "did you mean 'float'"),
        (["sampler.name=randm"], "sampler.name", "did you mean 'random'"),
        (["objective.function=obj.py:train", "objective.metric_regex=valid loss"], "", ""),
    ],
)
def test_recipe_mistakes_name_the_key_and_the_closest_spelling(tmp_path, overrides, key, phrase):
    study_files(tmp_path, FIXED)
    result = run_cli("validate", "r.yaml", *overrides, cwd=tmp_path)
    if not key:  # a regex on a function objective is simply unused: still valid
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stderr
    assert f": {key}: " in result.stderr and phrase in result.stderr, result.stderr


def test_validate_checks_the_regex_has_a_number_to_read(tmp_path):
    recipe = {
        "study": {"name": "v", "metric": "loss"},
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "objective": {"command": ["python", FAKE], "metric_regex": "valid loss [0-9.]+"},
    }
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(recipe))
    result = run_cli("validate", "v.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "objective.metric_regex" in result.stderr
    assert "(?P<value>" in result.stderr


def test_an_explicit_thread_setting_is_respected(tmp_path, monkeypatch):
    recipe = {
        "study": {"name": "t", "metric": "loss", "trials": 2, "seed": 0},
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "objective": {"command": ["python", FAKE, "--how", "json"]},
        "executor": {"workers": 2, "devices": "cpu"},
        "logdir": "logs",
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    seen = []
    for threads in ("1", None):
        env = {"OMP_NUM_THREADS": threads} if threads else {}
        result = run_cli("run", "t.yaml", "--fresh", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        for n in (0, 1):
            folder = tmp_path / "logs" / "t" / f"trial_{n:04d}"
            seen.append(json.loads((folder / "seen.json").read_text())["threads"])
    divided = str(max(1, (os.cpu_count() or 1) // 2))
    assert seen == ["1", "1", divided, divided]
