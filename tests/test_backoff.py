import pytest

from conveyor import Backoff, ConfigurationError


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("fixed", [2, 2, 2, 2, 2]),
        ("linear", [2, 4, 6, 8, 10]),
        ("exponential", [2, 4, 8, 16, 32]),
        ("fibonacci", [2, 2, 4, 6, 10]),
    ],
)
def test_each_kind_gives_its_sequence(kind, expected):
    policy = Backoff(kind, delay=2.0)
    assert [policy.seconds(n) for n in range(1, 6)] == expected


def test_callable_receives_the_failed_run_number():
    seen = []
    policy = Backoff(lambda n: seen.append(n) or n * 10)
    assert policy.seconds(3) == 30
    assert seen == [3]


def test_max_caps_the_wait():
    policy = Backoff("exponential", delay=1.0, max=5.0)
    assert [policy.seconds(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_jitter_only_ever_shortens_within_its_share():
    policy = Backoff("fixed", delay=10.0, jitter=0.5)
    waits = [policy.seconds(1) for _ in range(200)]
    assert all(5.0 <= w <= 10.0 for w in waits)
    assert len(set(waits)) > 1
    assert Backoff("fixed", delay=10.0, jitter=True).jitter == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "quadratic"}, "backoff must be one of .* not 'quadratic'"),
        (
            {"delay": -1},
            "backoff_delay must be a number of seconds from 0, up to 100 years, not -1",
        ),
        ({"max": -1}, "backoff_max must be a number of seconds from 0, up to 100 years, not -1"),
        ({"jitter": 2}, "jitter must be a share from 0 to 1"),
    ],
)
def test_bad_policies_are_refused(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        Backoff(**kwargs)
