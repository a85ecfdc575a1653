import math

import pytest

from torchtune_hp import Categorical, Float, Int, Space, SpaceExhausted, Study
from torchtune_hp.samplers import SamplerOptionError, make_sampler

SPACE = Space({"x": Float(0.0, 1.0), "y": Float(1e-3, 1.0, log=True), "k": Int(1, 9)})


def run(sampler: str, n: int, seed: int = 0, space: Space = SPACE, **options) -> list[dict]:
    study = Study("s", space, sampler=sampler, seed=seed, logdir=None, sampler_options=options)
    params = []
    for _ in range(n):
        t = study.ask()
        params.append(t.params)
        study.tell(t, 0.0)
    return params


@pytest.mark.parametrize("name", ["random", "sobol", "grid"])
def test_seeded_samplers_repeat_exactly(name):
    assert run(name, 12, seed=3) == run(name, 12, seed=3)
    assert run(name, 12, seed=3) != run(name, 12, seed=4)


@pytest.mark.parametrize("name", ["random", "sobol"])
def test_samplers_stay_in_the_space(name):
    for p in run(name, 64):
        assert 0 <= p["x"] <= 1 and 1e-3 <= p["y"] <= 1 and p["k"] in range(1, 10)


def test_random_is_log_aware():
    ys = [p["y"] for p in run("random", 400)]
    below = sum(y < 10**-1.5 for y in ys) / len(ys)  # half the log range lies below 10^-1.5
    assert 0.4 < below < 0.6


def test_sobol_spreads_points_evenly():
    xs = sorted(p["x"] for p in run("sobol", 16))
    # 16 scrambled Sobol points in 1-D: one in each sixteenth
    assert [math.floor(x * 16) for x in xs] == list(range(16))


def test_grid_visits_each_point_once_then_ends_cleanly():
    space = Space({"a": Float(0, 1), "b": Categorical(["u", "v", "w"])})
    study = Study("g", space, sampler="grid", logdir=None, sampler_options={"resolution": 4})
    seen = []

    def objective(trial):
        seen.append((trial.params["a"], trial.params["b"]))
        return trial.params["a"]

    study.optimize(objective, n_trials=100)  # the grid has 12 points: ends at 12
    assert len(seen) == 12 == len(set(seen))
    with pytest.raises(SpaceExhausted):
        study.ask()


def test_grid_with_pending_trials_never_duplicates():
    study = Study("g", {"a": Int(1, 5)}, sampler="grid", logdir=None)
    asked = [study.ask().params["a"] for _ in range(5)]
    assert sorted(asked) == [1, 2, 3, 4, 5]


def g(x: float) -> float:
    return math.sin(6 * x) + x * x


def test_low_effective_dimension_random_and_sobol_try_more_x_than_grid():
    """f(x, y) = g(x) + 0.01 h(y): only x matters. With 16 evaluations a 4x4 grid tries just 4
    values of x; random and Sobol search try 16 -- the seed's point, as numbers."""
    space = Space({"x": Float(0.0, 1.0), "y": Float(0.0, 1.0)})
    distinct_x = {}
    best = {}
    for name in ("grid", "random", "sobol"):
        opts = {"resolution": 4} if name == "grid" else {}
        study = Study(name, space, sampler=name, seed=1, logdir=None, sampler_options=opts)
        study.optimize(lambda t: g(t.params["x"]) + 0.01 * math.cos(t.params["y"]), n_trials=16)
        distinct_x[name] = len({round(t.params["x"], 12) for t in study.trials})
        best[name] = study.best_value
    assert distinct_x == {"grid": 4, "random": 16, "sobol": 16}
    assert best["sobol"] <= best["grid"]


def test_resumed_seeded_sequence_continues(tmp_path):
    first = Study("r", SPACE, sampler="sobol", seed=5, logdir=tmp_path)
    for _ in range(4):
        first.tell(first.ask(), 1.0)
    first.close()
    resumed = Study("r", SPACE, sampler="sobol", seed=5, logdir=tmp_path)
    later = [resumed.ask().params for _ in range(4)]
    resumed.close()
    assert later == run("sobol", 8, seed=5)[4:]


def test_unknown_sampler_and_option_are_named():
    with pytest.raises(SamplerOptionError, match="unknown sampler 'bogus'"):
        make_sampler("bogus", 0)
    with pytest.raises(SamplerOptionError, match="has no option 'resolutoin'") as e:
        make_sampler("grid", 0, {"resolutoin": 3})
    assert e.value.key == "resolutoin"
    with pytest.raises(SamplerOptionError, match="resolution must be an integer >= 2"):
        make_sampler("grid", 0, {"resolution": 1})
    with pytest.raises(SamplerOptionError, match="deterministic must be true or false, got 'no'"):
        make_sampler("gp", 0, {"deterministic": "no"})  # a string would have read as True
