"""The CLI as a user types it: real subprocesses, real SQLite files, real recipes."""

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli_cmd, function_recipe, on_terminal, read_trials, run_cli

import torchtune_hp
from torchtune_hp.errors import ConfigError
from torchtune_hp.recipe import load_recipe

GOOD = {
    "study": {"name": "bad", "metric": "loss", "trials": 2},
    "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
    "objective": {"function": "fast.py:train"},
}


def mutate(path_keys: str, value):
    """A copy of GOOD with one dotted key set (value None deletes it)."""
    import copy

    raw = copy.deepcopy(GOOD)
    *parents, last = path_keys.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return raw


BAD = [
    # (recipe or raw text, extra override args, the key the message must name, a phrase)
    (mutate("studdy", {"name": "x"}), [], "studdy", "unknown key (did you mean 'study'?)"),
    (mutate("study.trails", 5), [], "study.trails", "unknown key (did you mean 'trials'?)"),
    (mutate("study.trials", "many"), [], "study.trials", "valid integer"),
    (mutate("study.trials", 0), [], "study.trials", "greater than or equal to 1"),
    (mutate("study.mode", "up"), [], "study.mode", "'min' or 'max'"),
    (mutate("study.timeout", "8 hours"), [], "study.timeout", "a duration such as 90s, 30m"),
    (mutate("executor.devices", "gpu"), [], "executor.devices", "got 'gpu' (did you mean 'cpu'?)"),
    (GOOD, ["study.timeout=0"], "study.timeout", "expected a time > 0"),
    (mutate("space.x.high", -1.0), [], "space.x", "low must be < high"),
    (mutate("space.x.log", True), [], "space.x", "log=True needs low > 0"),
    (mutate("space.x", {"type": "categorical", "choices": []}), [], "space.x", "must not be empty"),
    (mutate("space.x", {"type": "categorical", "choices": ["a", "a"]}), [], "space.x", "repeated"),
    (mutate("space.x.type", "double"), [], "space.x.type", "expected one of"),
    (mutate("space.x.high", None), [], "space.x.high", "missing"),
    (mutate("space.x.lw", 0.1), [], "space.x.lw", "unknown key for type float"),
    (mutate("space.x", 0.5), [], "space.x", "valid dictionary"),
    (mutate("sampler", {"name": "annealing"}), [], "sampler.name", "unknown sampler 'annealing'"),
    (mutate("sampler", {"name": "grid", "reso": 3}), [], "sampler.reso", "has no option 'reso'"),
    (
        mutate("sampler", {"name": "gp", "n_init": 4, "acquisition": "bogus"}),
        [],
        "sampler.acquisition",
        "acquisition must be one of",
    ),
    (
        mutate("sampler", {"name": "gp", "n_init": 4, "output_warp": "yeojohnson"}),
        [],
        "sampler.output_warp",
        "got 'yeojohnson' (did you mean 'yeo_johnson'?)",
    ),
    (mutate("sampler", {"name": "gp", "beta": -1.0}), [], "sampler.beta", "beta must be >= 0"),
    (mutate("objective", None), [], "objective", "Field required"),
    (mutate("objective.function", "missing.py:train"), [], "objective.function", "does not exist"),
    (mutate("objective.function", "fats.py:train"), [], "objective.function", "mean 'fast.py'?"),
    (mutate("objective.function", "fast.py:nope"), [], "objective.function", "no function 'nope'"),
    (mutate("objective.function", "no_such_mod:f"), [], "objective.function", "cannot import"),
    (
        mutate("objective.function", "fast.py"),
        [],
        "objective.function",
        "expected file.py:function",
    ),
    (mutate("objective.function", "fast.py:trian"), [], "objective.function", "mean 'train'?)"),
    (mutate("train", {"epochs": 3}), [], "train.epochs", "has no parameter 'epochs'; it takes"),
    (mutate("train", {"fail_abov": 3}), [], "train.fail_abov", "(did you mean 'fail_above'?)"),
    (
        mutate("objective", {"command": ["python", "fast.py", "--epochs", 4, "--on", True]}),
        [],
        "objective.command",
        "element 5 reads as True, not a word: put it in quotes",  # 4 is the word '4'
    ),
    (GOOD, ["study.trials"], "study.trials", "dotted.key=value"),
    (GOOD, ["study.trials=[1"], "study.trials", "cannot parse value"),
    ("study: [unclosed\n", [], "", "not valid YAML: line 2, column 1: expected ',' or ']'"),
    ("study:\n  name: v\n   trials: 3\n", [], "", "YAML: line 3, column 10: mapping values"),
]


@pytest.mark.parametrize("raw, overrides, key, phrase", BAD, ids=[b[2] or "yaml" for b in BAD])
def test_bad_recipes_exit_2_naming_the_key(tmp_path, fast_recipe, raw, overrides, key, phrase):
    fast_recipe()  # writes fast.py beside the recipe
    path = tmp_path / "bad.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    result = run_cli("run", str(path), *overrides, f"logdir={tmp_path / 'logs'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert err.startswith(f"error: {path}: "), err
    if key:
        assert f" {key}: " in err or f"\n  {key}: " in err, err
    assert phrase in err
    assert "Traceback" not in err
    assert key or "\n" not in err, err  # PyYAML's own message quotes the text over lines
    assert not (tmp_path / "logs" / "bad" / "study.db").exists()


def test_a_module_reference_to_a_file_beside_the_recipe_suggests_the_file_form(tmp_path):
    """``objective.function: mine:train`` with mine.py beside the recipe, run from another
    folder: 'No module named mine' alone did not say what to write."""
    from torchtune_hp.objective import load_objective

    (tmp_path / "mine.py").write_text("def train(trial):\n    return 0.0\n")
    with pytest.raises(ConfigError, match=r"\(did you mean mine\.py:train, the file beside"):
        load_objective(tmp_path / "r.yaml", "mine:train", {})
    assert load_objective(tmp_path / "r.yaml", "mine.py:train", {})(None) == 0.0


def test_an_objective_without_a_place_for_the_trial_is_blamed_on_its_key(tmp_path):
    """``def train():`` in a recipe without a train section was blamed on ``train:`` (too many
    positional arguments), a section the recipe does not have."""
    from torchtune_hp.objective import load_objective

    (tmp_path / "o.py").write_text("def train():\n    return 0\n\ndef kw(*, lr):\n    return lr\n")
    for name in ("train", "kw"):
        with pytest.raises(ConfigError, match=rf"{name}\(\) must take the trial as its first") as e:
            load_objective(tmp_path / "r.yaml", f"o.py:{name}", {})
        assert e.value.key == "objective.function"


def test_good_recipe_loads_with_overrides_and_scientific_floats(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "study: {name: r}\nspace:\n  lr: {type: float, low: 1e-5, high: 1e-1, log: true}\n"
        "objective: {function: 'os.path:join'}\n"
    )
    recipe = load_recipe(path, ["study.trials=7", "sampler.name=grid", "sampler.resolution=3"])
    assert recipe.model.study.trials == 7
    assert recipe.space.params["lr"].low == 1e-5
    assert recipe.model.sampler.options == {"resolution": 3}


def test_overrides_keep_a_hash_expand_the_logdir_and_refuse_a_key_given_twice(
    tmp_path, monkeypatch
):
    """From a user's trial of odd paths: ``logdir=/tmp/exp #3 logs`` went to /tmp/exp (YAML
    read the rest as a comment) and ``train.note=run #3`` reached train() as 'run';
    ``logdir: ~/runs`` made a folder named ``~`` in the current one; a key given twice on the
    command line took the last in silence, where a recipe file refuses it."""
    path = tmp_path / "r.yaml"
    path.write_text(
        "study: {name: r}\nspace:\n  lr: {type: float, low: 1e-5, high: 1e-1, log: true}\n"
        "objective: {function: 'os.path:join'}\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", "runs")
    recipe = load_recipe(path, ["logdir=/tmp/exp #3 logs", "train.note=run #3", "train.t=#tag"])
    assert recipe.model.logdir == "/tmp/exp #3 logs"
    assert recipe.model.train == {"note": "run #3", "t": "#tag"}
    quoted = load_recipe(path, ["train.note='a #b'", "train.n=3"]).model.train
    assert quoted == {"note": "a #b", "n": 3}
    home = load_recipe(path, ["logdir=~/$RUNS"]).model.logdir
    assert home == str(tmp_path / "home" / "runs")
    with pytest.raises(ConfigError, match=r"logdir: .*environment variable \$NOT_SET_HERE"):
        load_recipe(path, ["logdir=$NOT_SET_HERE/x"])
    with pytest.raises(
        ConfigError, match=r"space.llr: the space has no parameter 'llr' \(did you mean 'lr'\?\)"
    ):
        load_recipe(path, ["space.llr.low=0.1"])  # it named space.llr.type, never written
    # YAML 1.1 read 1:30 as 90 (base 60: a 90 s limit where 1 h 30 was meant) and 010 as 8
    with pytest.raises(ConfigError, match=r"study.timeout: .*got '1:30'"):
        load_recipe(path, ["study.timeout=1:30"])
    assert load_recipe(path, ["study.trials=010", "study.seed=0x10"]).model.study.trials == 10
    added = load_recipe(path, ["space.wd={type: float, low: 0, high: 1}"])  # whole: added
    assert list(added.space.params) == ["lr", "wd"]
    for twice in (["study.trials=3", "study.trials=5"], ["space.lr.low=1e-4", "space.lr={}"]):
        with pytest.raises(ConfigError, match="set twice on the command line") as e:
            load_recipe(path, twice)
        assert repr(twice[0]) in str(e.value) and repr(twice[1]) in str(e.value)


def test_switching_the_sampler_on_the_command_line_drops_the_old_options_visibly():
    result = run_cli("validate", "digits_mlp", "sampler.name=random", "pruner.name=median")
    assert result.returncode == 0, result.stderr
    assert "sampler random" in result.stdout
    assert (
        "warning: sampler.name=random replaces 'gp': ignoring the recipe's sampler "
        "options ['acquisition']" in result.stderr
    )
    assert (
        "warning: pruner.name=median replaces 'gp': ignoring the recipe's pruner "
        "options ['min_resource', 'eta']" in result.stderr
    )
    same = run_cli("validate", "digits_mlp", "pruner.min_resource=2")  # same name: no warning
    assert same.returncode == 0 and "warning" not in same.stderr
    strict = run_cli("validate", "digits_mlp", "sampler.name=random", "sampler.beta=3")
    assert (
        strict.returncode == 2 and "sampler.beta: sampler 'random' has no option" in strict.stderr
    )


def test_validate_refuses_a_ray_address_of_no_known_form():
    result = run_cli("validate", "digits_mlp", "executor.name=ray", "executor.address=127.0.0.1")
    assert result.returncode == 2, result.stdout
    assert (
        "executor.address: expected 'auto', 'local', host:port (e.g. 10.0.0.5:6379) or "
        "ray://host:port, got '127.0.0.1' (set on the command line)" in result.stderr
    )
    builtin = Path(torchtune_hp.__file__).parent / "recipes" / "digits_mlp.yaml"
    for bad in ("http://10.0.0.5:6379", "host:99999", "head"):
        with pytest.raises(ConfigError, match="executor.address: expected 'auto'"):
            load_recipe(builtin, ["executor.name=ray", f"executor.address={bad}"])
    for fine in ("local", "10.0.0.5:6379", "ray://head:10001", "'[::1]:6379'"):
        recipe = load_recipe(builtin, ["executor.name=ray", f"executor.address={fine}"])
        assert recipe.model.executor.address == fine.strip("'")


def test_version_is_the_installed_one():
    from importlib.metadata import version

    shown = run_cli("--version")
    assert shown.returncode == 0 and shown.stdout.split()[-1] == version("torchtune-hp")


def test_unknown_recipe_name_lists_builtins(tmp_path):
    result = run_cli("run", "no_such_recipe")
    assert result.returncode == 2
    assert "no built-in recipe of that name" in result.stderr and "digits_mlp" in result.stderr
    # the repository's path typed in a folder of one's own points at the built-in recipe
    typed = run_cli("run", "recipes/digits_mlp.yaml", cwd=tmp_path)
    assert typed.returncode == 2 and "torchtune-hp run digits_mlp" in typed.stderr
    assert "torchtune-hp cp digits_mlp <folder>" in typed.stderr
    bad_name = run_cli("run", "digits_mlp", "study.name=../x", cwd=tmp_path)
    assert bad_name.returncode == 2 and bad_name.stderr.count("../x") == 1
    assert not (tmp_path / "logs").exists()


def test_ls_cp_validate(tmp_path):
    ls = run_cli("ls", cwd=tmp_path)
    assert ls.returncode == 0
    assert [line.split()[0] for line in ls.stdout.splitlines()] == [
        "digits_cli",
        "digits_cnn",
        "digits_mlp",
    ]
    cp = run_cli("cp", "digits_mlp", str(tmp_path / "mine") + "/", cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    copied = tmp_path / "mine" / "digits_mlp.yaml"
    # its first line runs the copy (it named the built-in, which ran instead of the edits)
    assert copied.read_text().startswith(
        f"# torchtune-hp run {tmp_path / 'mine'}/digits_mlp.yaml\n"
    )
    assert (tmp_path / "mine" / "digits_mlp.py").exists()
    # a recipe of one's own whose first line has overrides keeps them in its copy
    (tmp_path / "own.yaml").write_text("# torchtune-hp run own.yaml study.trials=3\nstudy: {}\n")
    own = run_cli("cp", "own.yaml", "my copy/", cwd=tmp_path)
    assert own.returncode == 0, own.stderr
    first = (tmp_path / "my copy" / "own.yaml").read_text().splitlines()[0]
    assert first == "# torchtune-hp run 'my copy/own.yaml' study.trials=3"
    dash = run_cli("cp", "own.yaml", "--", "-dash/", cwd=tmp_path)  # not read as an option
    assert dash.returncode == 0, dash.stderr
    first = (tmp_path / "-dash" / "own.yaml").read_text().splitlines()[0]
    assert first == "# torchtune-hp run ./-dash/own.yaml study.trials=3"
    cli_copy = run_cli("cp", "digits_cli", "cli", cwd=tmp_path)  # a new folder, no slash
    assert cli_copy.returncode == 0, cli_copy.stderr
    # the command's script and the module it imports
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "digits_cli.py",
        "digits_cli.yaml",
        "digits_mlp.py",
    ]
    ok_cli = run_cli("validate", str(tmp_path / "cli" / "digits_cli.yaml"), cwd=tmp_path)
    assert ok_cli.returncode == 0, ok_cli.stderr
    ok = run_cli("validate", str(copied), "study.trials=3", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "3 trials" in ok.stdout
    # a second recipe sharing the script (digits_cnn imports digits_mlp.py): the same bytes
    # are kept as they are; a copy the user edited is never overwritten
    cnn = run_cli("cp", "digits_cnn", str(tmp_path / "mine") + "/", cwd=tmp_path)
    assert cnn.returncode == 0, cnn.stderr
    assert "digits_mlp.py: already there, the same as digits_mlp.py" in cnn.stdout + cnn.stderr
    assert (tmp_path / "mine" / "digits_cnn.yaml").is_file()
    copied.write_text(copied.read_text() + "# my edit\n")
    again = run_cli("cp", "digits_mlp", str(tmp_path / "mine") + "/", cwd=tmp_path)
    assert again.returncode == 2 and "digits_mlp.yaml: already exists" in again.stderr
    assert copied.read_text().endswith("# my edit\n")


def test_a_study_past_the_open_file_limit_gets_the_classic_tensorboard_command(
    tmp_path, fast_recipe
):
    """TensorBoard's fast loader keeps every event file open, one or more per trial: past the
    shell's open-file limit it answers runs with nothing. The printed command says so."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    recipe = fast_recipe(trials=150)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    result = run_cli("run", str(recipe), cwd=tmp_path, preexec_fn=low_limit)
    assert result.returncode == 0, result.stderr
    dashboard = next(line for line in result.stdout.splitlines() if line.startswith("dashboard"))
    assert "--load_fast=false" in dashboard and "open-file limit of 256" in dashboard
    small = run_cli("run", str(recipe), "study.name=small", "study.trials=3", cwd=tmp_path)
    assert "--load_fast" not in small.stdout and "dashboard: tensorboard --logdir" in small.stdout


def test_a_misspelled_recipe_name_gets_the_closest_one(tmp_path):
    """A built-in name gets the closest built-in one; a path the closest file beside it (the
    built-in name would run the built-in recipe, not the user's copy)."""
    result = run_cli("run", "digits_mpl", cwd=tmp_path)
    assert result.returncode == 2
    assert "(did you mean 'digits_mlp'?)" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("cp", "digits_mlp", "my", cwd=tmp_path).returncode == 0
    copy = run_cli("run", "my/digits_mpl.yaml", cwd=tmp_path)
    assert copy.returncode == 2 and "(did you mean 'my/digits_mlp.yaml'?)" in copy.stderr
    # the stem, not '.yaml', is compared: no far-fetched file; a bare name beside its file
    (tmp_path / "o.yaml").write_text("study: {}\n")
    far = run_cli("validate", "nosuch.yaml", cwd=tmp_path)
    assert far.returncode == 2 and "did you mean" not in far.stderr, far.stderr
    bare = run_cli("validate", "o", cwd=tmp_path)
    assert bare.returncode == 2 and "(did you mean 'o.yaml'?)" in bare.stderr, bare.stderr


@pytest.mark.parametrize("cmd", ["run", "ls", "cp", "validate", "trials", "best"])
def test_every_subcommand_help_shows_an_example(cmd):
    result = run_cli(cmd, "--help")
    assert result.returncode == 0 and "Example:" in result.stdout, result.stdout


def _count(db: Path, state: str) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        return con.execute("SELECT COUNT(*) FROM trials WHERE state=?", (state,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _trials_json(study_dir: Path) -> list[dict]:
    result = run_cli("trials", str(study_dir), "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _start_and_wait(cmd: list[str], db: Path, at_least: int, cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _count(db, "COMPLETE") < at_least or _count(db, "RUNNING") < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the study did not get going"
        time.sleep(0.05)
    return proc


def test_sigkill_mid_run_then_resume_ends_with_exactly_n_trials(tmp_path, fast_recipe):
    recipe = fast_recipe(trials=8, sampler="random", sleep=0.3)
    db = tmp_path / "logs" / "fast" / "study.db"
    proc = _start_and_wait(cli_cmd("run", str(recipe)), db, at_least=3, cwd=tmp_path)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    before = _trials_json(tmp_path / "logs" / "fast")
    assert [t["state"] for t in before].count("RUNNING") == 1
    done_before = {json.dumps(t["params"]) for t in before if t["state"] == "COMPLETE"}
    killed = next(t for t in before if t["state"] == "RUNNING")

    result = run_cli("run", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = _trials_json(tmp_path / "logs" / "fast")
    complete = [t for t in after if t["state"] == "COMPLETE"]
    assert len(complete) == 8  # exactly the requested number
    params = [json.dumps(t["params"]) for t in complete]
    assert len(set(params)) == 8  # none repeated
    assert done_before <= set(params)  # none lost
    assert after[killed["number"]]["state"] == "FAILED"
    assert "died" in after[killed["number"]]["error"]
    assert json.dumps(killed["params"]) in params  # the killed trial's params ran again once
    for t in complete:
        assert t["start"].endswith("Z") and t["duration_s"] >= 0.3 and t["value"] >= 0


def test_ctrl_c_marks_the_trial_failed_and_a_rerun_resumes(tmp_path, fast_recipe):
    recipe = fast_recipe(trials=6, sampler="sobol", sleep=0.3)
    db = tmp_path / "logs" / "fast" / "study.db"
    proc = _start_and_wait(cli_cmd("run", str(recipe)), db, at_least=2, cwd=tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    err = err.decode()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("interrupted (SIGINT): running trials are marked FAILED (interrupted)")
    )
    states = [t["state"] for t in _trials_json(tmp_path / "logs" / "fast")]
    assert "RUNNING" not in states and states.count("FAILED") == 1
    assert run_cli("run", str(recipe), cwd=tmp_path).returncode == 0
    assert _count(db, "COMPLETE") == 6


def test_second_run_with_another_space_is_refused_without_losing_trials(tmp_path, fast_recipe):
    """``validate`` says beforehand what the run then does with the stored study: start it,
    train nothing, refuse it (the very error), go on in a wider space."""
    recipe = fast_recipe(trials=3)
    db = tmp_path / "logs" / "fast" / "study.db"
    fresh = run_cli("validate", str(recipe), cwd=tmp_path)
    assert f"a run starts study 'fast' in {db.parent}" in fresh.stdout
    assert run_cli("run", str(recipe), cwd=tmp_path).returncode == 0
    done = run_cli("validate", str(recipe), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "already has 3 of 3 trials: this run trains nothing" in done.stdout
    assert "goes on" not in done.stdout  # it said both: "goes on ... 3 of 3 trials done"
    above = run_cli("trials", "logs", cwd=tmp_path)  # the logdir, not the study: names them
    assert above.returncode == 2 and "the studies in this folder: ['fast']" in above.stderr
    narrow = ("space.x.low=0.9", "study.trials=5")
    told = run_cli("validate", str(recipe), *narrow, cwd=tmp_path)
    changed = run_cli("run", str(recipe), *narrow, cwd=tmp_path)
    assert changed.returncode == told.returncode == 2
    assert told.stderr == changed.stderr
    assert "'x' changed" in changed.stderr and "Traceback" not in changed.stderr
    # the recipe file and the key, as every other recipe error; the command line's too
    cli = "(set on the command line: space.x.low)"
    assert changed.stderr.startswith(f"error: {recipe}: space.x {cli}: {db.parent}: ")
    assert "trials so far lie outside it" in changed.stderr
    assert "--fresh sets the old study aside" in changed.stderr
    assert _count(db, "COMPLETE") == 3
    over = run_cli("validate", str(recipe), *narrow, "--fresh", cwd=tmp_path)
    assert over.returncode == 0, over.stderr
    assert f"a run moves {db.parent} aside (to fast.old-<time>, its 3 trials kept" in over.stdout
    wide = ("space.x.high=2.0", "study.trials=5")
    told = run_cli("validate", str(recipe), *wide, cwd=tmp_path)
    assert told.returncode == 0, told.stderr
    assert "a run goes on with study 'fast'" in told.stdout and "3 of 5 trials done" in told.stdout
    assert "in a changed space that holds every trial so far: parameter 'x'" in told.stdout
    other = run_cli("validate", str(recipe), *wide, "sampler.name=random", cwd=tmp_path)
    assert "its next trials search with sampler 'random' (its last run: 'sobol')" in other.stdout
    assert _count(db, "COMPLETE") == 3  # validate ran nothing
    wider = run_cli("run", str(recipe), *wide, cwd=tmp_path)
    assert wider.returncode == 0, wider.stderr
    assert "goes on in a changed space that holds every trial so far" in wider.stderr
    assert _count(db, "COMPLETE") == 5


def test_a_function_objective_imports_the_modules_beside_it(tmp_path):
    """``obj.py`` doing ``import helper`` (``helper.py`` beside it), as ``python obj.py``
    can: it did not import ('No module named helper') in validate, in the driver and in
    worker processes alike."""
    (tmp_path / "helper.py").write_text("def square(v):\n    return v * v\n")
    (tmp_path / "obj.py").write_text(
        "import helper\n\ndef train(trial):\n    return helper.square(trial.params['x'])\n"
    )
    _two_trials_of(tmp_path / "r.yaml", "obj.py:train")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_cli("validate", "../r.yaml", cwd=elsewhere).returncode == 0
    _runs_in_and_out_of_process("../r.yaml", elsewhere, lambda x: x**2)


def _two_trials_of(path: Path, function: str) -> None:
    """A recipe at ``path``: two trials of ``function`` over x in [0, 1], logdir ``logs``."""
    recipe = {
        "study": {"name": "two", "trials": 2, "seed": 0},
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "objective": {"function": function},
        "logdir": "logs",
    }
    path.write_text(yaml.safe_dump(recipe))


def _runs_in_and_out_of_process(recipe: str, cwd: Path, expected) -> None:
    """``recipe`` run from ``cwd`` in the driver and with two workers: every trial's value is
    ``expected(x)``."""
    for workers in (1, 2):
        name = f"w{workers}"
        done = run_cli("run", recipe, f"study.name={name}", f"executor.workers={workers}", cwd=cwd)
        assert done.returncode == 0, done.stderr
        trials = read_trials(cwd / "logs" / name)
        assert [t.value for t in trials] == [expected(t.params["x"]) for t in trials]


def test_a_package_beside_the_recipe_imports_as_package_module(tmp_path):
    """``function: mypkg.mod:train`` with ``mypkg/`` beside the recipe: 'No module named
    mypkg' from validate, although ``python -m mypkg.mod`` there imports it. The recipe's
    folder is searched after the installed packages, by the driver and by every worker."""
    (tmp_path / "conf" / "mypkg").mkdir(parents=True)
    (tmp_path / "conf" / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "conf" / "mypkg" / "mod.py").write_text(
        "def train(trial):\n    return trial.params['x'] + 1\n"
    )
    _two_trials_of(tmp_path / "conf" / "r.yaml", "mypkg.mod:train")
    assert run_cli("validate", "conf/r.yaml", cwd=tmp_path).returncode == 0
    _runs_in_and_out_of_process("conf/r.yaml", tmp_path, lambda x: x + 1)
    missing = run_cli("validate", "conf/r.yaml", "objective.function=nopkg.mod:train", cwd=tmp_path)
    assert missing.returncode == 2
    assert "cannot import module 'nopkg.mod': No module named 'nopkg'" in missing.stderr
    assert f"or the recipe's folder {(tmp_path / 'conf').resolve()})" in missing.stderr


def test_an_objective_file_that_parses_arguments_when_imported(tmp_path):
    """A helper's train.py ran ``parse_args()`` at its top: importing it read torchtune-hp's
    own arguments (``run r.yaml``), and argparse's exit printed ``usage: torchtune-hp ...`` and
    left, naming neither the file nor the key. It is imported as ``python train.py`` would run
    it (its own name, no arguments); one that exits then is a one-line error on its key."""
    parser = "import argparse\np = argparse.ArgumentParser()\np.add_argument('--scale', type=float"
    strict = f"{parser}, required=True)\nargs = p.parse_args()\n\ndef train(trial):\n    return 1\n"
    function_recipe(tmp_path, strict, "argv", 2)  # obj.py
    (tmp_path / "lenient.py").write_text(  # defaults when run bare: it imports and runs
        f"{parser}, default=2.0)\nargs = p.parse_args()\n\n"
        "def train(trial):\n    return args.scale * trial.params['x']\n"
    )
    refused = run_cli("validate", "r.yaml", cwd=tmp_path)
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: r.yaml: objective.function: ")
    assert "obj.py:4: it exits while imported (SystemExit: 2)" in last
    assert "torchtune-hp: error" not in refused.stderr  # argparse's own lines name the file
    for workers in (1, 2):
        done = run_cli(
            "run", "r.yaml", "objective.function=lenient.py:train", f"study.name=w{workers}",
            f"executor.workers={workers}", cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        trials = read_trials(tmp_path / "logs" / f"w{workers}")
        assert [t.value for t in trials] == pytest.approx([2.0 * t.params["x"] for t in trials])


def test_a_study_time_limit_ends_the_run_early_and_keeps_the_running_trials(tmp_path, fast_recipe):
    """``study.timeout`` with two worker processes: no trial starts after it, the two
    running end COMPLETE, the run exits 0 saying why it holds fewer trials, and the same
    command goes on from there."""
    recipe = fast_recipe(trials=40, sleep=1.5)
    args = ("run", str(recipe), "executor.workers=2", "study.timeout=2s")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "time limit (2s) passed with" in first.stderr, first.stderr
    assert "run it again to go on" in first.stderr
    done = read_trials(tmp_path / "logs" / "fast")
    assert 2 <= len(done) < 12, len(done)
    assert {t.state.name for t in done} == {"COMPLETE"}, [t.error for t in done]
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(read_trials(tmp_path / "logs" / "fast")) > len(done)


def test_rerunning_a_finished_study_with_other_settings_says_they_are_not_used(
    tmp_path, fast_recipe
):
    """The README's variants (``sampler.name=random``) rerun under the recipe's study name
    reopened the finished study: "3/3 trials done", exit 0, nothing trained, and recipe.yaml
    rewritten to the settings no trial used."""
    recipe = fast_recipe(trials=3)
    assert run_cli("run", str(recipe), cwd=tmp_path).returncode == 0
    record = tmp_path / "logs" / "fast" / "recipe.yaml"
    first = record.read_text()
    again = run_cli("run", str(recipe), "sampler.name=random", cwd=tmp_path)
    assert again.returncode == 0
    assert "already has 3 of 3 trials: this run trains nothing" in again.stderr
    assert "study.name=<another name>" in again.stderr and "--fresh" in again.stderr
    assert record.read_text() == first  # the record of the run that trained
    assert _count(tmp_path / "logs" / "fast" / "study.db", "COMPLETE") == 3


def test_the_live_panel_counts_to_the_total_not_past_it(tmp_path, fast_recipe):
    """In a terminal the panel shows the trial under way as n/N; when the last had ended it
    read 4/3."""
    import re

    recipe = fast_recipe(trials=3)
    rc, out = on_terminal("run", str(recipe), cwd=tmp_path)
    assert rc == 0
    shown = [int(n) for n in re.findall(r"trial\s+(\d+)/3", out)]
    assert shown and max(shown) == 3, shown  # the panel's row; log lines read "[3/3] trial 2"


def test_the_live_panels_clock_runs_and_it_shows_every_running_trial(tmp_path, fast_recipe):
    """The panel was drawn afresh only when a trial started or ended: over a trial of hours
    it read 'elapsed 0 s', and with two workers it showed one running trial (the other's end
    blanked the row while one still ran)."""
    import re

    recipe = fast_recipe(trials=2, sleep=4.0)
    rc, out = on_terminal("run", str(recipe), "executor.workers=2", cwd=tmp_path)
    assert rc == 0, out[-2000:]
    seconds = {int(n) for n in re.findall(r"elapsed\s+(\d+) s", out)}
    assert len(seconds) >= 5, seconds  # 0 s, 1 s, 2 s, ... (before: at starts and ends only)
    frames = out.split("elapsed")
    assert any("#0:" in frame and "#1:" in frame for frame in frames), out[-3000:]


@pytest.mark.slow
def test_digits_mlp_end_to_end(tmp_path):
    """The README's main job, shortened, as a user runs it: from a folder of their own, with
    the recipe's relative ``logdir: logs``; real Lightning training on the bundled digits."""
    logdir = tmp_path / "logs"
    result = run_cli("run", "digits_mlp", "study.trials=3", "train.max_epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "best val_loss = " in result.stdout
    study_dir = logdir / "digits_mlp"
    trials = _trials_json(study_dir)
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    for t in trials:
        assert 0.0 < t["value"] < 5.0
        assert set(t["params"]) == {"lr", "dropout", "weight_decay", "width", "optimizer"}
        assert t["params"]["optimizer"] in {"sgd", "adam", "adamw"}
    saved = yaml.safe_load((study_dir / "recipe.yaml").read_text())
    assert saved["study"]["trials"] == 3 and saved["logdir"] == "logs"
    best = json.loads(run_cli("best", str(study_dir), "--format", "json").stdout)
    assert best["value"] == min(t["value"] for t in trials if t["state"] == "COMPLETE")
    best_yaml = yaml.safe_load(run_cli("best", str(study_dir), "--format", "yaml").stdout)
    assert best_yaml == best["params"]
    table = run_cli("trials", str(study_dir))
    assert table.returncode == 0 and "COMPLETE" in table.stdout and "weight_decay" in table.stdout
    # the intermediate values were reported, one per epoch
    con = sqlite3.connect(study_dir / "study.db")
    assert con.execute("SELECT COUNT(*) FROM intermediate").fetchone()[0] == 9
    assert os.path.exists(study_dir / "trial_0000" / "params.yaml")
    # on the CPU, the same parameters give the same validation loss (seeded data and weights)
    again = run_cli(
        "run",
        "digits_mlp",
        "study.name=again",
        "study.trials=1",
        "train.max_epochs=3",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert _trials_json(logdir / "again")[0]["value"] == trials[0]["value"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "digits_cli"])
def test_script_recipes_end_to_end(tmp_path, name):
    """The built-in recipes that tune scripts, from a folder of the user's own with the recipe's
    relative logdir: two trials at once, each a real training run."""
    logdir = tmp_path / "logs"
    result = run_cli("run", name, "study.trials=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trials = _trials_json(logdir / name)
    assert len(trials) == 2
    for t in trials:
        assert t["state"] in ("COMPLETE", "PRUNED"), t["error"]
        assert 0.0 < t["value"] < 5.0
        assert (logdir / name / f"trial_{t['number']:04d}" / "stdout.log").exists()
    assert trials[0]["start"] < trials[1]["end"] and trials[1]["start"] < trials[0]["end"]


def test_a_bad_value_set_on_the_command_line_is_blamed_on_it(tmp_path):
    """It was blamed on the recipe file alone ('ok.yaml: study.trail: unknown key'); a bound
    of 0 hid what was given ('greater than 0' holds the 0), and an empty logdir= ran the study
    in the current folder (a blank one in a folder named by spaces)."""
    cases = {
        "study.trail=5": "study.trail: unknown key (did you mean 'trials'?)",
        "objective.timeout=0": "objective.timeout: expected a time > 0 (seconds as a number",
        "logdir=": "logdir: String should have at least 1 character (got '')",
        'logdir=" "': "logdir: expected a folder, got only blanks: ' ' (set on the command",
        'study.metric=" "': "study.metric: expected a metric's name, got only blanks: ' '",
        "space.lr.low=2": "space.lr: low must be < high, got low=2 high=0.3 (set on the "
        "command line: space.lr.low)",  # the error's key is above the one set: it is named
    }
    cases["train.max_epoch=3"] = (  # the objective's check, after the recipe's
        "train.max_epoch: train(trial, ...) has no parameter 'max_epoch' (did you mean "
        "'max_epochs'?)"
    )
    for override, said in cases.items():
        result = run_cli("validate", "digits_mlp", override, cwd=tmp_path)
        assert result.returncode == 2 and said in result.stderr, result.stderr
        assert "(set on the command line" in result.stderr
    literal = run_cli("validate", "digits_cnn", "objective.args=argprase")
    assert "(got 'argprase') (did you mean 'argparse'?)" in literal.stderr, literal.stderr
    flow = run_cli(  # YAML's flow mapping needs a space after the colon
        "validate", "digits_mlp", "executor.name=ray", "executor.resources_per_trial={cpu:4}"
    )
    assert "(YAML reads 'cpu:4' as one key: write 'cpu: 4')" in flow.stderr, flow.stderr
    limits = run_cli("validate", "digits_mlp", "pruner.max_resource=1", cwd=tmp_path)
    assert "pruner.max_resource: pruner 'gp': max_resource must be > 5, the reports at" in (
        limits.stderr
    ), limits.stderr  # it was taken, and no trial was ever stopped by the model
    two = run_cli(  # the error is about resume_ratio, not resume, which it starts like
        "validate", "digits_mlp", "pruner.resume=true", "pruner.resume_ratio=0", cwd=tmp_path
    )
    assert "pruner.resume_ratio: pruner 'gp': resume_ratio must be > 0" in two.stderr, two.stderr
    plain = run_cli("validate", "digits_mlp", "study.trials=3", cwd=tmp_path)
    assert plain.returncode == 0 and "command line" not in plain.stderr
