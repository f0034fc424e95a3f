"""``rediss://``: the Redis store over TLS, against a private redis-server
with a throw-away self-signed certificate."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from conveyor import Conveyor, StoreUnavailable
from conveyor.testing import drain
from helpers import jobs_reach_an_idle_worker
from servers import RedisServer, free_port


@pytest.fixture
def tls_url(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    server = RedisServer(
        free_port(),
        tmp_path / "redis",
        extra=("--tls-port", str(tls_port), "--tls-cert-file", str(cert),
               "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
               "--tls-auth-clients", "no"),
    )  # fmt: skip
    server.start()
    try:
        yield f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    finally:
        server.stop()


def test_jobs_run_over_tls(tls_url):
    app = Conveyor(tls_url)

    @app.task(name="add")
    def add(x, y):
        return x + y

    jobs = [add.enqueue(i, i) for i in range(20)]
    assert drain(app) == 20
    assert [job.result(timeout=1) for job in jobs] == [2 * i for i in range(20)]
    assert app.get_job(jobs[0].id).state == "completed"
    app.close()


def test_an_idle_worker_takes_jobs_over_tls(tls_url, monkeypatch):
    """An idle worker's event loop reads its wait's reply from the TLS socket."""
    app = Conveyor(tls_url)

    def blocking_wait(*args):  # what a thread would run instead
        raise AssertionError("the idle wait went through a thread")

    monkeypatch.setattr(app.broker, "wait_and_claim", blocking_wait)
    worker = jobs_reach_an_idle_worker(app, concurrency=2)
    assert (worker.processed, worker.failed) == (6, 2)
    app.close()


def test_a_wait_beside_busy_calls_on_the_same_loop_hears_its_reply(tls_url):
    """Over TLS each pipeline borrows a connection and the loop watches its
    socket. A busy call that ends gives its connection back at once, and the
    wait that takes it next must still be heard: the busy call's coroutine,
    resuming later, must not stop watching a socket that is no longer its."""
    app = Conveyor(tls_url)
    store = app.broker.async_store()

    async def main() -> list[str]:
        busy_done = asyncio.Event()

        async def busy() -> None:  # complete-and-claim on an empty queue, again and again
            while not busy_done.is_set():
                await store.complete_and_claim([], ["other"], 1, 30.0, "w")

        spinner = asyncio.create_task(busy())
        try:
            claimed = []
            for n in range(20):
                wait = asyncio.create_task(store.wait_and_claim(["main"], 1, 30.0, "w", 30.0))
                await asyncio.sleep(0.01)
                job = await asyncio.to_thread(app.enqueue, "echo", args=[n], queue="main")
                # Lost, its reply would be read only when it is due (30 s on).
                records = await asyncio.wait_for(wait, 5)
                assert [r.id for r in records] == [job.id]
                claimed.append(job.id)
            return claimed
        finally:
            busy_done.set()
            await spinner

    assert len(asyncio.run(main())) == 20
    store.close()
    app.close()


def test_a_certificate_it_cannot_verify_is_a_clear_error(tls_url):
    untrusted = tls_url.split("&ssl_ca_certs=")[0]  # the system store does not know our CA
    app = Conveyor(untrusted)
    with pytest.raises(StoreUnavailable, match=r"rediss://127\.0\.0\.1") as info:
        app.enqueue("add", args=[1, 2])
    assert "\n" not in str(info.value)
