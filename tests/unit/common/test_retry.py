import pytest

from services.common.retry import backoff_delay


@pytest.mark.parametrize(
    ("retry", "jitter", "expected"),
    [
        (0, 0.0, 0.25),
        (0, 1.0, 0.5),
        (1, 0.0, 0.5),
        (1, 0.5, 0.75),
        (3, 0.5, 3.0),
        (4, 1.0, 8.0),
        (5, 0.0, 5.0),
        (5, 1.0, 10.0),
        (30, 0.5, 7.5),
    ],
)
def test_backoff_values(retry, jitter, expected):
    assert backoff_delay(retry, base=0.5, cap=10.0, jitter=jitter) == pytest.approx(expected)


def test_backoff_grows_until_the_cap_and_stays_in_its_band():
    ceilings = [min(10.0, 0.5 * 2**r) for r in range(12)]
    for retry, ceiling in enumerate(ceilings):
        for jitter in (0.0, 0.3, 0.99, 1.0):
            assert ceiling / 2 <= backoff_delay(retry, 0.5, 10.0, jitter) <= ceiling
    assert ceilings == sorted(ceilings)


@pytest.mark.parametrize("jitter", [-0.1, 1.5])
def test_backoff_rejects_jitter_outside_unit_interval(jitter):
    with pytest.raises(ValueError):
        backoff_delay(0, 0.5, 10.0, jitter)
