import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchtune_hp import Categorical, Fixed, Float, Int, Space
from torchtune_hp.space import space_diff


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Float(1.0, 1.0), r"low = high = 1.0; .* \{type: fixed, value: 1.0\}"),
        (lambda: Float(2.0, 1.0), "low must be < high"),
        (lambda: Float(0.0, 1.0, log=True), "log=True needs low > 0"),
        (lambda: Float(-1.0, 1.0, log=True), "log=True needs low > 0"),
        (lambda: Float(0.0, math.inf), "high must be finite"),
        (lambda: Float(math.nan, 1.0), "low must be finite"),
        (lambda: Float(0.0, 1.0, step=-0.1), "step must be > 0"),
        (lambda: Int(5, 1), "low must be < high"),
        (lambda: Int(0, 10, log=True), "log=True needs low > 0"),
        (lambda: Int(1.5, 10), "low must be an integer"),
        (lambda: Categorical([]), "must not be empty"),
        (lambda: Categorical(["a", "b", "a"]), "repeated: 'a'"),
        (lambda: Categorical("abc"), "must be a list"),
        (lambda: Float("a", 1.0), "low must be a number"),
        (lambda: Float(-1.7e308, 1.7e308), "high - low must be finite"),
        (lambda: Int(0, 2**64), "high must be within \\+-2\\*\\*53"),
        (lambda: Int(-(2**60), 0), "low must be within"),
    ],
)
def test_bad_parameters_say_what_is_wrong(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_categorical_tells_bool_from_int():
    c = Categorical([True, 1, 1.0])  # three distinct choices
    assert [c.decode(c.encode(v)) for v in c.choices] == [True, 1, 1.0]
    assert type(c.decode(c.encode(1))) is int


floats = st.builds(
    lambda lo, span, log: Float(lo, lo + span, log=log),
    st.floats(1e-6, 1e3),
    st.floats(1e-3, 1e4),
    st.booleans(),
)
ints = st.builds(
    lambda lo, span, log, step: Int(lo, lo + span * step, log=log and step == 1, step=step),
    st.integers(1, 1000),
    st.integers(1, 500),
    st.booleans(),
    st.integers(1, 7),
)


@given(p=floats, u=st.floats(0.0, 1.0))
def test_float_decode_encode_roundtrip(p, u):
    x = p.decode(u)
    assert p.low <= x <= p.high
    assert p.encode(x) == pytest.approx(u, abs=1e-7)


@given(p=ints, u=st.floats(0.0, 1.0))
def test_int_decode_is_valid_and_stable(p, u):
    x = p.decode(u)
    assert p.contains(x)
    assert p.decode(p.encode(x)) == x  # an integer's encoding decodes to itself


@given(p=ints)
def test_uniform_u_gives_every_integer_a_share(p):
    if (p.high - p.low) // p.step + 1 > 50 or p.log:
        return
    values = {p.decode((i + 0.5) / 2000) for i in range(2000)}
    assert values == {p.low + k * p.step for k in range((p.high - p.low) // p.step + 1)}


@given(choices=st.lists(st.text(max_size=5), min_size=1, max_size=10, unique=True))
def test_categorical_roundtrip(choices):
    c = Categorical(choices)
    for v in choices:
        assert c.decode(c.encode(v)) == v


def test_space_encode_decode_keeps_fixed_and_order():
    space = Space(
        {"lr": Float(1e-4, 1e-1, log=True), "epochs": Fixed(5), "opt": Categorical(["a", "b"])}
    )
    assert space.dim == 2
    point = space.decode([0.5, 0.9])
    assert list(point) == ["lr", "epochs", "opt"]
    assert point["epochs"] == 5 and point["opt"] == "b"
    assert point["lr"] == pytest.approx(10**-2.5)
    assert space.encode(point) == pytest.approx([0.5, 0.75])


def test_log_float_is_uniform_in_log_space():
    p = Float(1e-4, 1.0, log=True)
    assert p.decode(0.25) == pytest.approx(1e-3)
    assert p.decode(0.5) == pytest.approx(1e-2)


def test_grid_covers_every_point_once():
    space = Space({"a": Float(0, 1), "b": Int(1, 3), "c": Categorical(["x", "y"]), "d": Fixed(7)})
    grid = space.grid({"a": 4, "b": 5})
    assert len(grid) == 4 * 3 * 2
    keys = {(g["a"], g["b"], g["c"], g["d"]) for g in grid}
    assert len(keys) == len(grid)
    assert sorted({g["a"] for g in grid}) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert {g["b"] for g in grid} == {1, 2, 3}


def test_log_int_grid_is_spread_in_log_space():
    assert Int(16, 512, log=True).grid(6) == [16, 32, 64, 128, 256, 512]


def test_validate_checks_user_points():
    space = Space({"lr": Float(0.1, 1.0), "n": Int(1, 4), "k": Fixed("z")})
    assert space.validate({"lr": 1, "n": 2}) == {"lr": 1.0, "n": 2, "k": "z"}
    with pytest.raises(ValueError, match="'lr'=5.0 is outside float"):
        space.validate({"lr": 5.0, "n": 2})
    with pytest.raises(ValueError, match="unknown parameters \\['oops'\\]"):
        space.validate({"lr": 0.5, "n": 2, "oops": 1})
    with pytest.raises(ValueError, match="'n' is missing"):
        space.validate({"lr": 0.5})
    with pytest.raises(ValueError, match="'lr'=True is not a number for float"):
        space.validate({"lr": True, "n": 2})
    stepped = Space({"d": Float(0.0, 1.0, step=0.1)})
    # 0.3 is on the grid, and stored as the float a suggestion of that point is
    suggested = stepped.decode(stepped.encode({"d": 0.3}))["d"]
    assert stepped.validate({"d": 0.3}) == {"d": suggested} and suggested == 0.3
    with pytest.raises(ValueError, match="'d'=0.123 is off the step grid of float.*step=0.1"):
        stepped.validate({"d": 0.123})  # off the grid every suggestion is on


def test_a_grid_too_large_or_a_misspelled_resolution_is_refused_before_any_point_is_built():
    from torchtune_hp.samplers.grid import GridSampler

    big = Space({f"x{i}": Float(0.0, 1.0) for i in range(30)})  # 5**30 points
    with pytest.raises(ValueError, match="makes a grid of 931322574615478515625 points"):
        GridSampler(resolution=5).check_space(big)
    small = Space({"n": Int(1, 9), "x": Float(0.0, 1.0)})
    with pytest.raises(ValueError, match="resolution names 'nn', not a parameter.*mean 'n'"):
        GridSampler(resolution={"nn": 9}).check_space(small)
    assert len(GridSampler(resolution={"n": 9}).points(small)) == 45


def test_space_diff_names_each_difference():
    a = Space({"lr": Float(0.1, 1.0), "n": Int(1, 4)})
    b = Space({"lr": Float(0.1, 2.0), "m": Int(1, 4)})
    diff = space_diff(a, b)
    assert len(diff) == 3
    assert any("'lr' changed" in d and "high=2.0" in d for d in diff)
    assert any("'n' was removed" in d for d in diff)
    assert any("'m' was added" in d for d in diff)
    assert space_diff(a, Space.from_dict(a.to_dict())) == []


def test_a_high_bound_off_the_step_grid_warns():
    """``Int(0, 10, step=3)`` can never suggest 10: said at once (Optuna warns too), and in a
    recipe with the key. A point off a step grid is said to be off it, not 'outside'."""
    import warnings

    with pytest.warns(UserWarning, match=r"high=10 is not on the step grid .* tried is 9$"):
        Int(0, 10, step=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Int(0, 9, step=3), Float(0.0, 1.0, step=0.1), Float(0.1, 1.0, step=0.05)
        stored = Space({"n": Int(0, 9, step=3)}).to_dict()
        stored["n"]["high"] = 10
        Space.from_dict(stored)  # a stored space was warned about when it was made
    f = Float(0.0, 1.0, step=0.1)
    with pytest.raises(ValueError, match="'s'=0.35 is off the step grid of float"):
        Space({"s": f}).validate({"s": 0.35})


def test_a_stepped_float_is_written_as_its_grid_point():
    """``low + k * step`` gave 0.30000000000000004 for ``step: 0.1``: in the table, best.yaml,
    the CSV and TensorBoard. Every point of the grid has the decimals of low and step."""
    drop = Float(0.0, 0.6, step=0.1)
    assert [drop.snap(k * 0.1 + 0.01) for k in range(7)] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert {repr(drop.decode(u / 100)) for u in range(101)} <= {repr(k / 10) for k in range(7)}
    assert Float(1e-3, 1e-2, step=2.5e-4).snap(0.00537) == 0.00525
    thirds = Float(0.0, 1.0, step=1 / 3)  # a step of many decimals keeps them
    assert thirds.snap(0.7) == 2 * (1 / 3) and thirds.contains(thirds.snap(0.7))


def test_a_study_stored_with_unrounded_steps_runs_no_point_twice(tmp_path):
    """Trials stored before grid points were rounded hold 0.30000000000000004: reopened, the
    grid ran 0.3 again, as points are compared by value."""
    from torchtune_hp import Study
    from torchtune_hp.storage import Storage

    space = {"d": Float(0.0, 0.6, step=0.1)}
    Study("g", space, sampler="grid", logdir=tmp_path, tensorboard=False).close()
    storage = Storage(tmp_path / "g" / "study.db")
    storage.add_trial({"d": 0.1 * 3}, 1.0)  # as an earlier version stored it
    storage.close()
    with Study("g", space, sampler="grid", logdir=tmp_path, tensorboard=False) as study:
        study.optimize(lambda t: t.params["d"], n_trials=7)  # the grid's 5 points, then done
        assert sorted(t.params["d"] for t in study.trials) == [0.0, 0.1, 0.3, 0.4, 0.6]
