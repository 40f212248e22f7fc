"""seglab serve against clients that ask for too much or leave: a real server process, real sockets.

A request that would hold the model for minutes is stopped at its deadline with a 503; a client
that leaves stops its prediction; clients that drop their uploads cost one log line each; an
allocation failure is a 503 and the server goes on; SIGTERM ends a server whose model is inside a
forward pass that cannot be stopped, within its shutdown timeout, and Ctrl-C twice at once; slow
uploads get a 408 and requests past --max-queue a 503; without a token only localhost is answered.
"""
from __future__ import annotations

import io
import resource
import signal
import socket
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ISBI, start_server

GOOD = (ISBI / "test" / "images" / "02.png").read_bytes()
# 16-pixel tiles overlapping by 90% over a 512x512 slice: 497^2 tiles, 8 passes each: minutes.
SLOW = "?tile=16&overlap=0.9&tta=d4"
DEADLINE_S = 5


@pytest.fixture(scope="module")
def strict(checkpoint):
    """A server that lets requests ask for 16-pixel tiles and 10^6 of them (a slow request is easy
    to make), stops predictions after 5 s, and reads 20-megapixel images."""
    server = start_server("-m", checkpoint, "--device", "cpu", "--request-timeout", DEADLINE_S, "--min-tile", 16,
                          "--max-tiles", 1_000_000, "--max-pixels", 20_000_000, "--max-upload-mb", 30)
    yield server
    server.stop()


def post(server, data: bytes, query: str = "", timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/predict{query}", content=data, timeout=timeout)


def answered_soon(server, within: float) -> None:
    started = time.perf_counter()
    reply = post(server, GOOD, timeout=within)
    assert reply.status_code == 200, reply.text
    assert time.perf_counter() - started < within


def test_a_server_without_a_token_answers_only_requests_for_localhost(strict):
    port = strict.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert httpx.get(f"{strict.url}/v1/model", headers={"Host": host}).status_code == 200, host
    rebound = httpx.get(f"{strict.url}/v1/model", headers={"Host": f"attacker.example:{port}"})
    assert rebound.status_code == 421 and "localhost only" in rebound.json()["error"]  # DNS rebinding


def test_a_request_past_its_deadline_is_stopped_with_a_503_and_the_model_is_free_again(strict):
    started = time.perf_counter()
    slow = post(strict, GOOD, SLOW)
    seconds = time.perf_counter() - started
    assert slow.status_code == 503 and "--request-timeout" in slow.json()["error"], slow.text
    assert DEADLINE_S <= seconds < DEADLINE_S + 10
    answered_soon(strict, within=10)  # the stopped prediction no longer holds the model


def test_a_client_that_leaves_stops_its_prediction(strict):
    started = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        post(strict, GOOD, SLOW, timeout=1)
    answered_soon(strict, within=10)
    assert time.perf_counter() - started < DEADLINE_S - 0.5, "stopped by the deadline, not by the client leaving"
    assert any("the client left while its prediction ran" in line for line in strict.stderr)


def test_clients_that_drop_their_uploads_cost_one_log_line_each(strict):
    before = len(strict.stderr)
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", int(strict.url.rsplit(":", 1)[1]))) as client:
            client.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(GOOD) + GOOD[:20_000])
            time.sleep(0.01)
    answered_soon(strict, within=10)
    deadline = time.time() + 5
    while len(strict.stderr) - before < 30 and time.time() < deadline:
        time.sleep(0.05)
    logged = strict.stderr[before:]
    assert len(logged) <= 30 and all("the client left during its upload" in line for line in logged), logged
    assert not any("Traceback" in line for line in strict.stderr)


def test_an_allocation_failure_is_a_503_and_the_server_goes_on(strict):
    """The server's address space is capped (prlimit, soft limit only) a little above what it uses,
    so a 4-megapixel prediction cannot allocate its activations; then the cap is lifted."""
    pid = strict.process.pid
    with open(f"/proc/{pid}/status") as status:
        used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    hard = resource.prlimit(pid, resource.RLIMIT_AS)[1]
    picture = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 2000), dtype=np.uint8)).save(picture, "PNG")
    try:
        resource.prlimit(pid, resource.RLIMIT_AS, (used + 150_000_000, hard))
    except (PermissionError, OSError) as error:
        pytest.skip(f"cannot cap another process's memory here ({error})")
    try:
        reply = post(strict, picture.getvalue())
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, (hard, hard))
    assert reply.status_code == 503, reply.text
    assert "not enough memory" in reply.json()["error"] and "\n" not in reply.json()["error"]
    answered_soon(strict, within=10)
    assert not any("Traceback" in line for line in strict.stderr)


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)],
                         ids=["SIGTERM", "Ctrl-C twice"])
def test_a_stop_ends_a_server_whose_model_is_inside_a_long_forward_pass(checkpoint, signals):
    # One batch of four 1024-pixel tiles, 8 TTA passes each: ~30 s of model time with no point to stop at.
    server = start_server("-m", checkpoint, "--device", "cpu", "--shutdown-timeout", 1, "--max-pixels", 20_000_000,
                          "--max-queue", 1, "--upload-timeout", 2)
    slow_upload = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    slow_upload.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n" + GOOD[:1000])
    slow_upload.settimeout(20)
    assert slow_upload.recv(200).startswith(b"HTTP/1.1 408"), "a slow upload keeps its place in the queue"
    slow_upload.close()
    picture = io.BytesIO()
    Image.fromarray(np.zeros((2048, 2048), np.uint8)).save(picture, "PNG")
    reply = {}

    def send() -> None:
        try:
            reply["response"] = post(server, picture.getvalue(), "?tile=1024&tta=d4")
        except httpx.HTTPError as error:  # the second signal drops the connection
            reply["error"] = error

    request = threading.Thread(target=send)
    try:
        request.start()
        deadline = time.time() + 20
        while httpx.get(f"{server.url}/healthz").json()["in_flight"] == 0 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1)  # decoded and inside the model by now
        busy = post(server, GOOD)  # --max-queue 1: refused before its body is read
        assert busy.status_code == 503 and "--max-queue" in busy.json()["error"] and busy.headers["retry-after"]
        stopped = time.perf_counter()
        for stop in signals:  # a second one: at once, without waiting for the requests in flight
            server.process.send_signal(stop)
            time.sleep(0.3)
        try:
            code = server.process.wait(timeout=1 + 15)
        except subprocess.TimeoutExpired:
            raise AssertionError("the stop did not end the busy server within its shutdown timeout") from None
        seconds = time.perf_counter() - stopped
        request.join(timeout=10)
    finally:
        server.stop()
    assert code == 0 and seconds < 1 + 10, seconds
    if len(signals) == 1:
        assert reply["response"].status_code == 503 and "stopping" in reply["response"].json()["error"]
        assert "stopped (SIGTERM)" in "".join(server.stdout)
    else:
        assert "stopped at once (SIGINT again): 0 predictions answered, 1 requests in flight dropped" in \
            "".join(server.stdout)
    assert "Traceback" not in "".join(server.stderr) and "terminate called" not in "".join(server.stderr)
