import pytest

from node.backoff import backoff_delay, retry_after_delay


def test_exponential_without_jitter_and_capped():
    assert [backoff_delay(a, base_s=1, cap_s=10, jitter=False) for a in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_jitter_stays_between_half_and_full():
    assert backoff_delay(3, base_s=1, rand=lambda: 0.0) == 2.0
    assert backoff_delay(3, base_s=1, rand=lambda: 1.0) == 4.0
    assert backoff_delay(10_000, base_s=1, cap_s=30, rand=lambda: 1.0) == 30  # no overflow


def test_retry_after_wins_when_present():
    assert retry_after_delay("7", 1, jitter=False) == 7.0
    assert retry_after_delay("bogus", 2, base_s=1, jitter=False) == 2.0
    assert retry_after_delay(None, 1, base_s=3, jitter=False) == 3.0
    assert retry_after_delay("9999", 1, cap_s=60) == 60


def test_attempt_zero_is_a_programming_error():
    with pytest.raises(ValueError):
        backoff_delay(0)
