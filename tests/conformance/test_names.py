"""Names, against every store (property-based, with Hypothesis).

Queue names, job ids and task names come from users, URLs and command lines.
Whatever a user passes, an accepted name must round-trip exactly and never
address another queue's or job's data (on Redis a name ends up inside keys
and hash tags); a refused one is refused with one line, and nothing is
stored. The rules (``conveyor.validate``): a queue name is 1 to 128 of
``A-Z a-z 0-9 _ - . :``; a job id and a task name are 1 to 255 printable
characters.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conveyor import ConfigurationError, Conveyor

from .conftest import STORES

HOSTILE = ["}", "{", "{x}", "a}b", ":job:", "a:job:b", "}:job:x", "x}:waiting", "job", "waiting",
           "queues", "%s%n", "../etc", "a b", "é", "漢字", "\n", "a\nb", "\t", "\0", "\ud800",
           "\u200b", "\u2028", "*", "?", "[a]", "\\", "'", '"', "" ]  # fmt: skip
QUEUE_RULE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

good_queue = st.from_regex(QUEUE_RULE, fullmatch=True)
queue_names = st.one_of(
    good_queue,
    good_queue.map(lambda name: name[:8]),  # short ones, so queues are shared
    st.sampled_from([*HOSTILE, "default", "a", "a:job", "a.b-c_d", "x" * 128, "x" * 129]),
    st.text(max_size=20),
)
printable = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
good_name = st.one_of(
    st.text(printable, min_size=1, max_size=40),
    st.builds(lambda a, b: a + b, st.sampled_from(HOSTILE[:16]), st.text(printable, max_size=10)),
).filter(lambda name: len(name) <= 255 and name.isprintable())
free_text = st.one_of(
    st.text(printable, min_size=1, max_size=40),
    st.text(st.one_of(printable, st.just(" ")), min_size=1, max_size=255),
    st.builds(lambda a, b: a + b, st.sampled_from(HOSTILE), st.text(printable, max_size=10)),
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=300),
    st.sampled_from([*HOSTILE, "y" * 255, "y" * 256, "periodic:report:2026-12-03T06:00:00Z"]),
)


def accepted_queue(name: str) -> bool:
    return QUEUE_RULE.fullmatch(name) is not None


def accepted_name(name: str) -> bool:
    return 0 < len(name) <= 255 and name.isprintable()


_stores = itertools.count()


@pytest.fixture(params=list(STORES), ids=list(STORES))
def make_app(request: pytest.FixtureRequest, tmp_path: Path):
    """A factory of apps on fresh, empty stores of one kind (one per example)."""
    apps: list[Conveyor] = []

    def make() -> Conveyor:
        folder = tmp_path / f"s{next(_stores)}"
        folder.mkdir()
        app = Conveyor(STORES[request.param](request, folder))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    calls=st.lists(
        st.one_of(
            st.tuples(good_queue.map(lambda name: name[:6]), good_name, good_name),  # accepted
            st.tuples(queue_names, free_text, free_text),  # anything
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_accepted_names_round_trip_apart_and_refused_ones_store_nothing(make_app, calls):
    app = make_app()
    stored: dict[str, tuple[str, str, int]] = {}  # job id -> (queue, task, its argument)
    for n, (queue, job_id, task) in enumerate(calls):
        good = accepted_queue(queue) and accepted_name(job_id) and accepted_name(task)
        before = app.stats()
        if not good or job_id in stored:
            if not good:
                with pytest.raises(ConfigurationError) as caught:
                    app.enqueue(task, [n], queue=queue, job_id=job_id)
                assert "\n" not in str(caught.value)
                assert app.stats() == before, "a refused call stored something"
            continue
        job = app.enqueue(task, [n], queue=queue, job_id=job_id)
        assert (job.id, job.queue, job.task) == (job_id, queue, task)
        stored[job_id] = (queue, task, n)

    for job_id, (queue, task, n) in stored.items():
        job = app.get_job(job_id)
        assert job is not None, f"job {job_id!r} is gone"
        assert (job.id, job.queue, job.task, job.args, job.state) == (
            job_id, queue, task, [n], "waiting",
        )  # fmt: skip
    event(
        f"{min(len(stored), 3)}+ jobs stored" if len(stored) >= 3 else f"{len(stored)} jobs stored"
    )
    per_queue = Counter(queue for queue, _, _ in stored.values())
    assert {q: counts["waiting"] for q, counts in app.stats().items()} == dict(per_queue)
    for queue, count in per_queue.items():
        listed = app.jobs(queue=queue, limit=1000)
        assert sorted(j.id for j in listed) == sorted(
            job_id for job_id, (q, _, _) in stored.items() if q == queue
        )
        assert len(listed) == count
