"""seglab serve as its users meet it: a real server process on a loopback port, real ISBI files, real HTTP.

Single requests equal `seglab predict` byte for byte; 200 requests from 16 concurrent clients are
batched and each equals its single-request mask; every bad request is a 4xx with one line of JSON
and the server answers the next one; SIGTERM lets a request in flight finish.
"""
from __future__ import annotations

import asyncio
import io
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import ISBI, SUBPROCESS_ENV, assert_clean_failure, run_cli, run_main, start_server
from seglab.serve.encode import PROBABILITY_SCALE, run_lengths
from seglab.serve.options import PredictQuery, is_loopback


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def post(server, data: bytes, query: str = "", headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/predict{query}", content=data, timeout=60,
                      headers={**server.headers, **(headers or {})}, **kwargs)


# ---- predictions equal `seglab predict` -------------------------------------------------------------
def test_a_single_request_returns_the_bytes_seglab_predict_writes(served, serve_images, served_predictions):
    for name in ("whole", "crop"):
        raw = post(served, serve_images[name].read_bytes())
        assert raw.status_code == 200 and raw.headers["content-type"] == "image/png", raw.text[:300]
        assert raw.headers["x-seglab-batch"] == "1"
        assert raw.content == served_predictions[name].read_bytes(), f"{name}: the mask differs from seglab predict's"
    form = httpx.post(f"{served.url}/v1/predict", files={"file": ("crop.png", serve_images["crop"].read_bytes())},
                      headers=served.headers, timeout=60)
    assert form.status_code == 200 and form.content == served_predictions["crop"].read_bytes()
    overlay = post(served, serve_images["whole"].read_bytes(), "?output=overlay")
    assert overlay.content == served_predictions["whole_overlay"].read_bytes()
    instances = post(served, serve_images["crop"].read_bytes(), "?output=instances")
    assert instances.content == served_predictions["crop_instances"].read_bytes()
    tuned = post(served, serve_images["crop"].read_bytes(), "?tta=flips&tile=96&threshold=0.4")
    assert tuned.status_code == 200 and tuned.content == served_predictions["crop_options"].read_bytes()


def test_json_holds_the_classes_their_counts_and_a_run_length_encoding_of_the_mask(served, serve_images,
                                                                                     served_predictions):
    reply = post(served, serve_images["crop"].read_bytes(), "?format=json")
    assert reply.status_code == 200, reply.text
    result = reply.json()
    classes = np.repeat(result["rle"]["values"], result["rle"]["counts"]).reshape(result["height"], result["width"])
    values = np.array([c["value"] for c in result["classes"]])[classes]
    assert np.array_equal(values, png_array(served_predictions["crop"].read_bytes()))
    assert [c["pixels"] for c in result["classes"]] == [int((classes == k).sum()) for k in (0, 1)]
    assert [c["value"] for c in result["classes"]] == [0, 255]


def test_the_probability_map_is_the_models_probability_in_16_bits(served, checkpoint, serve_images):
    import seglab

    reply = post(served, serve_images["crop"].read_bytes(), "?output=probability")
    assert reply.status_code == 200
    served_probability = png_array(reply.content).astype(np.float64) / PROBABILITY_SCALE
    local = seglab.load(checkpoint, device="cpu", precision="fp32", log=lambda *_: None)
    local = local.predict(serve_images["crop"]).probabilities[0]
    assert served_probability.shape == (200, 300)
    assert np.abs(served_probability - local).max() <= 0.5 / PROBABILITY_SCALE + 1e-6


def test_the_model_is_described_and_the_api_documented(served):
    model = httpx.get(f"{served.url}/v1/model", headers=served.headers).json()
    assert [c["value"] for c in model["classes"]] == [0, 255] and model["binary"] is True
    assert all(len(c["color"]) == 3 for c in model["classes"])
    assert model["input"] == {"channels": 1, "scale": 1.0, "normalization": "per_image"}
    assert model["model"] == "unet" and model["model_kwargs"]["base_channels"] == 4
    assert model["training"]["epoch"] >= 1 and "val_dice" in model["training"]["metrics"]
    assert model["server"]["max_batch"] == 8 and model["server"]["max_upload_bytes"] == 2_000_000
    assert model["server"]["max_tiles"] == 1024 and model["server"]["min_tile"] == 64
    assert model["inference"]["runtime"] == "pytorch fp32"  # as the server was told
    schema = httpx.get(f"{served.url}/openapi.json", headers=served.headers).json()
    parameters = {p["name"] for p in schema["paths"]["/v1/predict"]["post"]["parameters"]}
    assert {"threshold", "tta", "tile", "output", "format"} <= parameters
    docs = httpx.get(f"{served.url}/docs", headers=served.headers)
    assert docs.status_code == 200 and "/v1/predict" in docs.text and "threshold" in docs.text
    assert "<script" not in docs.text and "http" not in docs.text.replace(served.url, "")  # nothing from a CDN
    for path in ("/docs", "/openapi.json"):  # the API's description needs the token like the API
        assert httpx.get(f"{served.url}{path}").status_code == 401
    assert httpx.get(f"{served.url}/redoc").status_code == 404


# ---- load: batching under 16 concurrent clients ---------------------------------------------------------
def well_decided_crops(checkpoint, count: int = 6, margin: float = 5e-6) -> list[bytes]:
    """PNG bytes of 64x64 ISBI test crops whose every pixel's probability is at least `margin` from
    the threshold. A forward pass of several images can round differently from one of a single
    image (BENCHMARKS.md: by up to 1.1e-6 in probability on 64x64 crops; 7e-7 with this tiny model),
    so only such pixels have a mask that cannot depend on the batch; crops with a pixel closer to
    the threshold are not used."""
    import seglab

    model = seglab.load(checkpoint, device="cpu", precision="fp32", log=lambda *_: None)
    chosen = []
    for index in range(40):
        with Image.open(ISBI / "test" / "images" / f"{index % 30:02d}.png") as slice_:
            left, top = 64 * (index // 30 * 3 + 1), 64 * (index % 7)
            crop = slice_.crop((left, top, left + 64, top + 64))
        probability = model.predict(np.asarray(crop)).probabilities[0]
        if np.abs(probability - model.threshold).min() >= margin:
            buffer = io.BytesIO()
            crop.save(buffer, format="PNG")
            chosen.append(buffer.getvalue())
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"only {len(chosen)} of 40 crops keep {margin} from the threshold")


async def send_concurrently(server, bodies: list[bytes], clients: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(clients)

        async def one(body: bytes) -> httpx.Response:
            async with gate:
                return await client.post("/v1/predict", content=body)

        return await asyncio.gather(*(one(body) for body in bodies))


def test_200_requests_from_16_clients_are_batched_and_equal_single_requests(served, checkpoint):
    crops = well_decided_crops(checkpoint)
    single = [post(served, crop) for crop in crops]
    assert all(reply.status_code == 200 and reply.headers["x-seglab-batch"] == "1" for reply in single)
    before = httpx.get(f"{served.url}/healthz").json()["batching"]
    bodies = [crops[i % len(crops)] for i in range(200)]
    started = time.perf_counter()
    replies = asyncio.run(send_concurrently(served, bodies, clients=16))
    seconds = time.perf_counter() - started
    assert [r.status_code for r in replies] == [200] * 200, next(r.text for r in replies if r.status_code != 200)
    for i, reply in enumerate(replies):
        assert reply.content == single[i % len(crops)].content, f"request {i}: mask differs from its single request"
    after = httpx.get(f"{served.url}/healthz").json()["batching"]
    assert after["requests"] - before["requests"] == 200
    calls = after["batches"] - before["batches"]
    assert calls < 200 and after["largest"] > 1, f"no batching: {after}"
    assert max(int(r.headers["x-seglab-batch"]) for r in replies) > 1
    assert seconds < 60, f"200 requests took {seconds:.1f} s"


# ---- bad requests: a 4xx with one line of JSON, and the server goes on ----------------------------------
def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 1x1 PNG whose header claims width x height pixels (IHDR rewritten, CRC fixed)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def colour_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def chunks_over(limit: int):
    """A body without Content-Length (chunked) that grows past the limit."""
    for _ in range(limit // 65536 + 2):
        yield b"\0" * 65536


def tiff_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, compression="zlib", **options)
    return buffer.getvalue()


GOOD = (ISBI / "test" / "images" / "02.png").read_bytes()
# 3 x 2100 x 2100 planar RGB in 13 KB: its first page's "first two axes" are 3 x 2100, which is
# what main checked; 13 megapixels is over the served 4.
PLANAR_TIFF_BOMB = tiff_bytes(np.zeros((3, 2100, 2100), np.uint8), photometric="rgb", planarconfig="separate")
BAD_REQUESTS = {
    "not an image": (dict(data=b"hello, I am text\n" * 20), 415, "is not an image"),
    "truncated": (dict(data=GOOD[:3000]), 400, "corrupt or truncated"),
    "empty": (dict(data=b""), 400, "empty request body"),
    "too many bytes": (dict(data=b"\0" * 2_500_000), 413, "over the server's limit of 2 MB"),
    "too many bytes, chunked": (dict(data=None, chunked=True), 413, "over the server's limit of 2 MB"),
    "decompression bomb": (dict(data=png_bomb()), 413, "decompression bomb"),
    "colour for a gray model": (dict(data=colour_png()), 422, "colour image but the model takes 1 channel"),
    "missing token": (dict(data=GOOD, headers={"Authorization": ""}), 401, "missing token"),
    "wrong token": (dict(data=GOOD, headers={"Authorization": "Bearer nope"}), 401, "wrong token"),
    "unknown option": (dict(data=GOOD, query="?treshold=0.3"), 400, "did you mean 'threshold'"),
    "bad option value": (dict(data=GOOD, query="?tta=sideways"), 400, "invalid query.tta: 'sideways'"),
    "repeated option": (dict(data=GOOD, query="?tta=flips&tta=d4"), 400, "given 2 times"),
    "json of an overlay": (dict(data=GOOD, query="?output=overlay&format=json"), 400, "format=json is for"),
    "form without a file": (dict(data=None, form=True), 400, "holds no file"),
    "planar TIFF bomb": (dict(data=PLANAR_TIFF_BOMB), 413, "claims 3x2100x2100 pixels"),
    "TIFF stack": (dict(data=tiff_bytes(np.zeros((100, 64, 64), np.uint8))), 400, "stack of 100 pages; send one"),
    "TIFF of complex numbers": (dict(data=tiff_bytes(np.zeros((64, 64), np.complex64))), 400, "complex numbers"),
    "TIFF of 5 channels": (dict(data=tiff_bytes(np.zeros((64, 64, 5), np.uint8), planarconfig="contig")), 400,
                           "has 5 channels per pixel"),
    "tile below the minimum": (dict(data=GOOD, query="?tile=8&overlap=0.9"), 400, "smallest tile is 64 px"),
    "more tiles than allowed": (dict(data=GOOD, query="?tile=64&overlap=0.95"), 400, "22801 tiles, over"),
    "scale past the pixel limit": (dict(data=GOOD, query="?scale=16"), 413, "ask for a smaller scale"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_every_bad_request_is_a_4xx_with_one_line_and_the_server_goes_on(served, case):
    given, status, expected = BAD_REQUESTS[case]
    headers = {**served.headers, **given.get("headers", {})}
    headers = {key: value for key, value in headers.items() if value}
    url = f"{served.url}/v1/predict{given.get('query', '')}"
    if given.get("chunked"):
        reply = httpx.post(url, content=chunks_over(2_000_000), headers=headers, timeout=60)
    elif given.get("form"):
        form = b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file here\r\n--x--\r\n'
        reply = httpx.post(url, content=form, headers={**headers, "Content-Type": "multipart/form-data; boundary=x"},
                           timeout=60)
    else:
        reply = httpx.post(url, content=given["data"], headers=headers, timeout=60)
    assert reply.status_code == status, f"{case}: {reply.status_code} {reply.text[:300]}"
    assert reply.headers["content-type"] == "application/json"
    message = reply.json()["error"]
    assert expected in message and "\n" not in message and "Traceback" not in reply.text, message
    assert post(served, GOOD).status_code == 200, f"the server did not answer after: {case}"


def test_unknown_routes_and_methods_are_one_line_too(served):
    missing = httpx.get(f"{served.url}/v2/predict")
    long = httpx.get(f"{served.url}/static/{'a' * 5000}")
    assert long.status_code == 404 and len(long.json()["error"]) < 200  # a request is named, not repeated
    wrong_method = httpx.get(f"{served.url}/v1/predict", headers=served.headers)
    assert missing.status_code == 404 and "/v1/predict" in missing.json()["error"]
    assert wrong_method.status_code == 405 and "GET is not allowed" in wrong_method.json()["error"]
    assert httpx.get(f"{served.url}/v1/model").status_code == 401
    assert httpx.get(f"{served.url}/healthz").json()["status"] == "ok"
    assert not any("Traceback" in line for line in served.stderr), "".join(served.stderr)[-2000:]


# ---- the runs page's API --------------------------------------------------------------------------------
def test_runs_under_the_runs_folder_are_listed_with_curves_metrics_and_report(served, trained_run):
    listing = httpx.get(f"{served.url}/v1/runs", headers=served.headers).json()
    (run,) = [entry for entry in listing["runs"] if entry["name"] == "run"]
    assert run["model"] == "unet" and run["last"]["epoch"] == 8 and "val_dice" in run["last"]
    assert run["best"]["monitor"] == "val_dice" and run["stopped_by"] == "epochs"
    curves = httpx.get(f"{served.url}/v1/runs/run/curves.png", headers=served.headers)
    report = httpx.get(f"{served.url}/v1/runs/run/report.html", headers=served.headers)
    assert curves.status_code == 200 and curves.content.startswith(b"\x89PNG")
    assert report.status_code == 200 and "<html" in report.text and "default-src 'none'" in \
        report.headers["content-security-policy"]
    escape = httpx.get(f"{served.url}/v1/runs/..%2F..%2Fetc/report.html", headers=served.headers)
    assert escape.status_code == 404 and "no run" in escape.json()["error"]
    assert listing["root"] == trained_run.run_dir.parent.name  # names under --runs, no paths of the server


def test_the_runs_page_serves_nothing_a_symlink_leads_out_of_the_runs_folder(served, trained_run, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the server's secret\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.yaml").write_bytes((trained_run.run_dir / "config.yaml").read_bytes())
    runs = trained_run.run_dir.parent
    evil = runs / "evil"
    evil.mkdir()
    try:
        for name in ("config.yaml", "metrics.jsonl"):
            (evil / name).write_bytes((trained_run.run_dir / name).read_bytes())
        (evil / "report.html").symlink_to(secret)
        (runs / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        listing = httpx.get(f"{served.url}/v1/runs", headers=served.headers)
        shown = {entry["name"]: entry for entry in listing.json()["runs"]}
        assert "linked" not in shown and "report.html" in shown["evil"]["error"], shown
        for path in ("evil/report.html", "linked/report.html", "linked/curves.png"):
            reply = httpx.get(f"{served.url}/v1/runs/{path}", headers=served.headers)
            assert reply.status_code == 404 and "secret" not in reply.text, (path, reply.text)
        assert "secret" not in listing.text and str(runs) not in listing.text
    finally:
        (runs / "linked").unlink(missing_ok=True)
        for child in evil.iterdir():
            child.unlink()
        evil.rmdir()


# ---- starting and stopping ------------------------------------------------------------------------------
def test_binding_beyond_loopback_needs_a_token_or_no_auth(checkpoint, tmp_path):
    refused = run_main("serve", "-m", checkpoint, "--host", "0.0.0.0")
    assert_clean_failure(refused)
    assert refused.stderr.count("\n") == 1 and "refusing to serve on 0.0.0.0 without a token" in refused.stderr
    assert "--token" in refused.stderr and "--no-auth" in refused.stderr
    both = run_main("serve", "-m", checkpoint, "--host", "0.0.0.0", "--token", "abcdefgh", "--no-auth")
    assert both.rc == 1 and "contradict" in both.stderr
    no_runs = run_main("serve", "-m", checkpoint, "--runs", tmp_path / "missing")
    assert no_runs.rc == 1 and "no such folder" in no_runs.stderr
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_importing_seglab_does_not_import_the_server():
    code = "import sys, seglab, seglab.cli; print('fastapi' in sys.modules, 'uvicorn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=SUBPROCESS_ENV | {
        "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert done.stdout.split() == ["False", "False"], done.stderr


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    """The session's model exported to TorchScript: the server serves exports as well as checkpoints."""
    path = tmp_path_factory.mktemp("exported") / "tiny.ts"
    export = run_cli("export", "-m", checkpoint, "--format", "torchscript", "-o", path)
    assert export.rc == 0, export.output
    return path


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_lets_the_request_in_flight_finish_then_ends_with_0(exported, stop):
    # A lone request waits 1 s for company in the batcher: long enough to be in flight at the signal.
    server = start_server("-m", exported, "--device", "cpu", "--max-batch", 4, "--max-wait-ms", 1000)
    try:
        assert httpx.get(f"{server.url}/v1/model").json()["format"] == "ts"
        reply = {}
        request = threading.Thread(target=lambda: reply.update(response=post(server, GOOD)))
        request.start()
        deadline = time.time() + 10
        while httpx.get(f"{server.url}/healthz").json()["in_flight"] == 0 and time.time() < deadline:
            time.sleep(0.02)
        server.process.send_signal(stop)
        request.join(timeout=30)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    assert reply["response"].status_code == 200 and png_array(reply["response"].content).shape == (512, 512)
    assert f"stopped ({stop.name}): 1 predictions answered" in "".join(server.stdout)
    assert "Traceback" not in "".join(server.stderr), "".join(server.stderr)[-2000:]


# ---- pieces -------------------------------------------------------------------------------------------
def test_run_lengths_read_back_to_the_class_map():
    classes = np.array([[0, 0, 1], [1, 1, 2], [2, 0, 0]])
    values, counts = run_lengths(classes)
    assert (values, counts) == ([0, 1, 2, 0], [2, 3, 2, 2])
    assert np.array_equal(np.repeat(values, counts).reshape(3, 3), classes)
    assert run_lengths(np.zeros((0, 4), dtype=int)) == ([], [])


def test_query_options_share_the_rules_of_seglab_predict():
    assert PredictQuery(tile=["64", "96"], threshold="0.25").inference_changes() == {"tile": [64, 96],
                                                                                      "threshold": 0.25}
    for bad, expected in [({"tile": ["4"]}, "each >= 8"), ({"overlap": "1"}, "< 1"), ({"threshold": "2"}, "<= 1"),
                          ({"output": "edges"}, "one of: mask, overlay")]:
        with pytest.raises(Exception, match=expected):
            PredictQuery(**bad)


def test_the_batcher_groups_only_same_size_requests_and_tiled_ones_go_alone(checkpoint):
    import seglab
    from seglab.serve.batcher import Batcher

    model = seglab.load(checkpoint, device="cpu", log=lambda *_: None)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 40, 1), dtype=np.uint8) for _ in range(6)]
    images += [rng.integers(0, 255, (48, 48, 1), dtype=np.uint8) for _ in range(2)]
    tiled = model.with_options(tile=[16])

    async def scenario(predictor, key):
        batcher = Batcher(max_batch=4, max_wait_ms=100)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(predictor, key, image, f"image {i}")
                                          for i, image in enumerate(images))), batcher.counters
        finally:
            await batcher.stop()

    results, counters = asyncio.run(scenario(model, ()))
    assert [batch for _, batch in results] == [4, 4, 4, 4, 2, 2, 2, 2]
    assert counters.to_dict() == {"requests": 8, "batches": 3, "largest": 4, "sizes": {"2": 2, "4": 1}}
    assert [prediction.mask.shape for prediction, _ in results] == [(32, 40)] * 6 + [(48, 48)] * 2
    alone, counters = asyncio.run(scenario(tiled, (("tile", (16,)),)))
    assert [batch for _, batch in alone] == [1] * 8 and counters.batches == 8


def test_small_answers_are_not_held_back_by_delayed_acks(served):
    """Connections set TCP_NODELAY: a response's headers and body are two writes, and without it the
    second waited for the client's delayed ACK, 40 ms on Linux (GET /healthz took 44 ms on
    loopback; 1 ms with it). Median of 15 keep-alive requests, bounded well under 40 ms."""
    with httpx.Client(base_url=served.url) as client:
        client.get("/healthz")
        seconds = []
        for _ in range(15):
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            seconds.append(time.perf_counter() - started)
    assert sorted(seconds)[7] < 0.02, seconds
