"""The mixer: sum then saturate, never wrap; mix-minus leaves each source out of its own mix."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from media.frames import AUDIO_FRAME_SAMPLES
from media.pipeline.mixer import mix, mix_minus

N = AUDIO_FRAME_SAMPLES


def full(*values: int) -> npt.NDArray[np.int16]:
    return np.array([np.full(N, v, dtype=np.int16) for v in values], dtype=np.int16).reshape(
        len(values), N
    )


def reference(
    stack: npt.NDArray[np.int16], gains: npt.NDArray[np.float64] | None = None
) -> npt.NDArray[np.int64]:
    wide = stack.astype(np.int64) if gains is None else stack.astype(np.float64) * gains[:, None]
    total = np.rint(wide.sum(axis=0)) if gains is not None else wide.sum(axis=0)
    return np.clip(total, -32768, 32767).astype(np.int64)


def test_saturates_at_both_rails_without_wrapping() -> None:
    assert (mix(full(32767, 1)) == 32767).all()
    assert (mix(full(-32768, -1)) == -32768).all()
    assert (mix(full(30000, 30000, 30000)) == 32767).all()
    assert (mix(full(-30000, -30000, -30000)) == -32768).all()
    # In range stays exact, including a sum that passes beyond a rail and comes back.
    assert (mix(full(32767, 32767, -32768)) == 32766).all()
    assert mix(full(32767, 1)).dtype == np.int16


def test_sequence_input_matches_stack_input() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 4, 5, 9):
        stack = rng.integers(-32768, 32768, (n, N), dtype=np.int16)
        assert np.array_equal(mix(list(stack)), mix(stack))
        assert np.array_equal(mix_minus(list(stack)), mix_minus(stack))


def test_no_sources_is_silence() -> None:
    assert np.array_equal(mix([]), np.zeros(N, np.int16))
    assert np.array_equal(mix(np.zeros((0, N), np.int16)), np.zeros(N, np.int16))
    assert mix_minus([]).shape == (0, N)


def test_gains_are_applied_and_saturate() -> None:
    out = mix(full(1000, 2000, 100), gains=[0.5, 0.25, -1.0])
    assert (out == 500 + 500 - 100).all()
    assert (mix(full(20000), gains=[2.0]) == 32767).all()
    assert (mix(full(20000), gains=[-2.0]) == -32768).all()
    assert (mix(full(3), gains=[0.5]) == 2).all()  # rounded to nearest even, not truncated


def test_mix_minus_excludes_self() -> None:
    stack = full(100, 200, 400)
    out = mix_minus(stack)
    assert out.shape == (3, N) and out.dtype == np.int16
    assert [int(row[0]) for row in out] == [600, 500, 300]
    out = mix_minus(stack, gains=[1.0, 0.5, 0.0])
    assert [int(row[0]) for row in out] == [100, 100, 200]
    assert [int(row[0]) for row in mix_minus(full(32767, 32767, 1))] == [32767, 32767, 32767]


def test_rejects_bad_shapes_and_gains() -> None:
    with pytest.raises(ValueError):
        mix(np.zeros((2, 319), np.int16))
    with pytest.raises(ValueError):
        mix(np.zeros((2, N), np.int32))
    with pytest.raises(ValueError):
        mix([np.zeros(N, np.float32)])
    with pytest.raises(ValueError):
        mix(full(1, 2), gains=[1.0])
    with pytest.raises(ValueError):
        mix(full(1), gains=[float("nan")])
    with pytest.raises(ValueError):
        mix_minus(full(1), gains=[float("inf")])


def test_inputs_are_not_modified() -> None:
    stack = full(32767, 32767)
    before = stack.copy()
    mix(stack)
    mix_minus(stack)
    mix(stack, gains=[2.0, 2.0])
    assert np.array_equal(stack, before)


stacks = st.integers(0, 12).flatmap(
    lambda n: hnp.arrays(np.int16, (n, N), elements=st.integers(-32768, 32767))
)


@settings(max_examples=150, deadline=None)
@given(stacks)
def test_mix_matches_int64_reference(stack: npt.NDArray[np.int16]) -> None:
    assert np.array_equal(mix(stack).astype(np.int64), reference(stack))
    assert np.array_equal(mix(list(stack)).astype(np.int64), reference(stack))


@settings(max_examples=150, deadline=None)
@given(stacks)
def test_mix_minus_matches_reference(stack: npt.NDArray[np.int16]) -> None:
    out = mix_minus(stack).astype(np.int64)
    for i in range(len(stack)):
        assert np.array_equal(out[i], reference(np.delete(stack, i, axis=0)))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.int16, (n, N), elements=st.integers(-32768, 32767)),
            hnp.arrays(np.float64, (n,), elements=st.floats(-4.0, 4.0, width=32)),
        )
    )
)
def test_gained_mix_is_within_one_step_of_reference(
    case: tuple[npt.NDArray[np.int16], npt.NDArray[np.float64]],
) -> None:
    # float32 arithmetic: a sum that lands near a .5 boundary may round either way.
    stack, gains = case
    got = mix(stack, gains).astype(np.int64)
    assert np.abs(got - reference(stack, gains)).max() <= 1
    minus = mix_minus(stack, gains).astype(np.int64)
    for i in range(len(stack)):
        expected = reference(np.delete(stack, i, axis=0), np.delete(gains, i))
        assert np.abs(minus[i] - expected).max() <= 1
