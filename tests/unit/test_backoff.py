from __future__ import annotations

import pytest

from sessions.backoff import Backoff


def test_waits_are_drawn_under_a_doubling_capped_ceiling_and_reset_after_a_success() -> None:
    top = Backoff(0.5, 3.0, draw=lambda: 1.0)  # the ceiling itself
    assert [top.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    top.reset()
    assert top.next() == 0.5
    half = Backoff(0.5, 3.0, draw=lambda: 0.5)
    assert [half.next() for _ in range(3)] == [0.25, 0.5, 1.0]


def test_real_draws_stay_within_zero_and_the_ceiling() -> None:
    b = Backoff(0.01, 0.08)
    for ceiling in (0.01, 0.02, 0.04, 0.08, 0.08, 0.08):
        assert 0.0 <= b.next() <= ceiling


def test_bad_bounds_are_refused() -> None:
    for base, cap in ((0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)):
        with pytest.raises(ValueError):
            Backoff(base, cap)
