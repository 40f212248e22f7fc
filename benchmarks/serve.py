"""seglab serve under load: requests/s and p50/p99 latency at 1, 4 and 16 concurrent clients, by precision and batching.

    python benchmarks/serve.py [--device cpu] [--base-channels 16] [--size 256] [--requests 160]
                               [--clients 1,4,16] [--max-batch 8] [--max-wait-ms 5] [--threads N]

One U-Net (depth 4, `--base-channels`, random He-initialised weights: speed does not depend on
training) saved as a checkpoint as `seglab train` writes one on this device (its precision "auto"),
served by a real `seglab serve` process on a loopback port: in float32 without batching (how the CPU
served before issue 22: the reference of the RATIO lines), with the defaults without batching, and
with the defaults and batching (`--max-batch`, `--max-wait-ms`; `--max-batch 1` leaves it out). Each client count
sends `--requests` POST /v1/predict of real ISBI 2012 test crops (`--size` x `--size`, 8
distinct), from that many concurrent clients (httpx, keep-alive connections). Latency is per
request, from sending to the last byte of the mask PNG. The server's own counters give the mean
number of requests per forward pass. "masks off" counts the responses whose mask differs from
the same image's single-request mask (batched convolutions round differently; see README).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

from bench_common import device_name  # noqa: E402 (benchmarks/ is on sys.path)
from seglab.data.classmap import ClassMap
from seglab.models import UNet
from seglab.runtime.checkpoint import make_checkpoint, save_checkpoint
from seglab.runtime.device import precision_name, resolve_precision

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "data" / "isbi2012"


def write_checkpoint(path: Path, base_channels: int, device: torch.device) -> Path:
    """A checkpoint as `seglab train` writes one on `device`: its precision is the one "auto" trains in."""
    torch.manual_seed(0)
    model = UNet(in_channels=1, num_classes=1, base_channels=base_channels, depth=4)
    kwargs = {"in_channels": 1, "num_classes": 1, "base_channels": base_channels, "depth": 4}
    preprocess = {"channels": 1, "scale": 1.0, "normalization": "per_image", "threshold": 0.5,
                  "precision": precision_name(resolve_precision("auto", False, device))}
    return save_checkpoint(make_checkpoint(model, "unet", kwargs, ClassMap.from_values([0, 255]), preprocess), path)


def crops(size: int, count: int = 8) -> list[bytes]:
    """PNG bytes of `count` size x size crops of the ISBI test slices."""
    bodies = []
    for index in range(count):
        with Image.open(ISBI / "test" / "images" / f"{index:02d}.png") as slice_:
            offset = (index * 37) % max(1, 512 - size)
            buffer = io.BytesIO()
            slice_.crop((offset, offset, offset + size, offset + size)).save(buffer, format="PNG")
            bodies.append(buffer.getvalue())
    return bodies


def start_server(checkpoint: Path, device: str, max_batch: int, max_wait_ms: float,
                 threads: int | None, precision: str = "auto") -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "seglab", "serve", "-m", str(checkpoint), "--device", device, "--port", "0",
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--precision", precision]
    command += ["--threads", str(threads)] if threads else []
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = process.stdout.readline()
    if " at http://" not in line:
        process.kill()
        raise SystemExit(f"seglab serve did not start: {line!r}")
    return process, line.split(" at ", 1)[1].split("/ ", 1)[0]


async def load(url: str, bodies: list[bytes], requests: int, clients: int) -> tuple[float, list[float], list[bytes]]:
    """(wall seconds, latency of each request in s, mask bytes in request order)."""
    latencies, masks = [0.0] * requests, [b""] * requests
    queue = list(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=clients)) as client:
        async def worker():
            while queue:
                index = queue.pop(0)
                started = time.perf_counter()
                reply = await client.post("/v1/predict", content=bodies[index % len(bodies)])
                reply.raise_for_status()
                latencies[index], masks[index] = time.perf_counter() - started, reply.content

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started, latencies, masks


def batch_parity(checkpoint: Path, bodies: list[bytes], device: str) -> tuple[float, int, int]:
    """In this process: (largest |probability of a batched pass - of a single pass|, mask pixels
    that differ, pixels compared) over the crops, batched all at once against one at a time."""
    from seglab.api.predicting import load
    from seglab.data.io import decode_image

    model = load(checkpoint, device=device, log=lambda *_: None)
    images = [decode_image(body) for body in bodies]
    batched = model.predict_batch(images, [f"crop {i}" for i in range(len(images))])
    single = [model.predict_batch([image], ["crop"])[0] for image in images]
    largest = max(float(abs(b.probabilities - s.probabilities).max()) for b, s in zip(batched, single))
    flipped = sum(int((b.mask != s.mask).sum()) for b, s in zip(batched, single))
    return largest, flipped, sum(s.mask.size for s in single)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(url: str, bodies: list[bytes], reference: list[bytes], requests: int, clients: int) -> dict:
    before = httpx.get(f"{url}/healthz").json()["batching"]
    seconds, latencies, masks = asyncio.run(load(url, bodies, requests, clients))
    after = httpx.get(f"{url}/healthz").json()["batching"]
    off = sum(mask != reference[i % len(bodies)] for i, mask in enumerate(masks))
    return {"rps": requests / seconds, "p50": 1000 * statistics.median(latencies),
            "p99": 1000 * percentile(latencies, 0.99),
            "per_pass": (after["requests"] - before["requests"]) / max(1, after["batches"] - before["batches"]),
            "off": off}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, help="the server's --threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    bodies = crops(args.size)
    if args.threads:
        torch.set_num_threads(args.threads)  # so that the device line names the server's threads
    threads = f"server --threads {args.threads}" if args.threads else "server threads: torch's default"
    print(f"device: {device_name(device)}, {threads}; U-Net depth 4, {args.base_channels} base channels, {args.size}x"
          f"{args.size} ISBI crops, {args.requests} requests per row")
    print("| precision | batching | clients | requests/s | p50 ms | p99 ms | requests per forward pass | masks off |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    # float32 unbatched is how the CPU served before issue 22 (the reference of the RATIO lines)
    setups = [("fp32", "off", 1), ("auto", "off", 1)]
    if args.max_batch > 1:
        setups.append(("auto", f"on ({args.max_batch}, {args.max_wait_ms:g} ms)", args.max_batch))
    rates: dict[tuple[str, str, int], float] = {}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder) / "bench.pt", args.base_channels, device)
        for precision, label, max_batch in setups:
            process, url = start_server(checkpoint, str(device), max_batch, args.max_wait_ms, args.threads, precision)
            try:
                reference = [httpx.post(f"{url}/v1/predict", content=body, timeout=300).content for body in bodies]
                for clients in (int(c) for c in args.clients.split(",")):
                    row = measure(url, bodies, reference, args.requests, clients)
                    rates[precision, label, clients] = row["rps"]
                    print(f"| {precision} | {label} | {clients} | {row['rps']:.1f} | {row['p50']:.0f} | "
                          f"{row['p99']:.0f} | {row['per_pass']:.2f} | {row['off']} |", flush=True)
            finally:
                process.terminate()
                process.wait(timeout=60)
        largest, flipped, pixels = batch_parity(checkpoint, bodies, str(device))
        print(f"a batched pass of the {len(bodies)} crops against single passes: probabilities differ by up to "
              f"{largest:.1e}; {flipped} of {pixels} mask pixels differ")
    for clients in (int(c) for c in args.clients.split(",")):
        print(f"RATIO serve clients={clients} {rates['auto', 'off', clients] / rates['fp32', 'off', clients]:.2f}")


if __name__ == "__main__":
    main()
