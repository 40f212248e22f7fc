"""Shared fixtures: real ISBI 2012 files cut into tiny folders, one tiny model trained per session, the CLI."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "data" / "isbi2012"
# One intra-op thread per process: on a small machine shared with other jobs, two OpenMP threads
# spin-wait on each other (a 128x128 U-Net forward measured 1 s with 2 threads, 60 ms with 1).
torch.set_num_threads(1)
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
# Flags of every tiny training run: small enough for two shared CPU cores.
TINY_FLAGS = ("--device", "cpu", "--no-progress")


@dataclass
class CliResult:
    """What a user sees after running `seglab ...`: exit code and the two output streams."""

    rc: int
    stdout: str
    stderr: str

    def __iter__(self):  # rc, out, err = run_seglab(...)
        return iter((self.rc, self.stdout, self.stderr))

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args, cwd: str | Path | None = None, env: dict | None = None, timeout: float = 300) -> CliResult:
    """Run `python -m seglab ARGS` in a fresh process, as a user would, and capture everything."""
    full_env = dict(os.environ)
    full_env.pop("SEGLAB_DATA", None)
    for key, value in SUBPROCESS_ENV.items():
        full_env.setdefault(key, value)
    full_env.update(env or {})
    done = subprocess.run([sys.executable, "-m", "seglab", *[str(a) for a in args]], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return CliResult(done.returncode, done.stdout, done.stderr)


def run_group(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run torchrun in its own process group; on a timeout kill the launcher AND its workers."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout} s:\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_main(*args) -> CliResult:
    """`seglab ARGS` through the command's own entry point (seglab.cli.main) in this process: the
    same parsing, checks and messages as run_cli, without a new interpreter for each of the many
    cases that end before any training."""
    from seglab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's usage errors
            rc = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(rc, out.getvalue(), err.getvalue())


def train_until_killed(config, epochs: int) -> None:
    """Train the RunConfig `config` as a job killed after `epochs` epochs would: the process ends as
    epoch `epochs` + 1 starts, and only what reached the disk (last.pt, metrics.jsonl) survives."""
    from seglab.engine.recipe import Recipe
    from seglab.engine.trainer import Trainer

    trainer = Trainer(Recipe.from_data(config), progress=False, log=lambda *a, **k: None)
    real_epoch = trainer._train_epoch

    def killed_at(epoch: int) -> bool:
        if epoch == epochs:
            raise KeyboardInterrupt  # the process ends here
        return real_epoch(epoch)

    trainer._train_epoch = killed_at
    try:
        trainer.fit()
    except KeyboardInterrupt:
        pass
    finally:
        trainer.close()  # the process ended: the kernel drops its lock on the run folder


def assert_clean_failure(result: CliResult) -> None:
    """A user error: exit code 1, a one-line message, no Python traceback."""
    assert result.rc == 1, f"expected exit 1, got {result.rc}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.output, result.output


def copy_isbi_crop(split: str, kind: str, stem: str, dest: Path, box: tuple[int, int, int, int] | None = None,
                   name: str | None = None) -> Path:
    """Copy one bundled ISBI file (optionally cropped to `box` = left, top, right, bottom) to `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with Image.open(ISBI / split / kind / f"{stem}.png") as image:
        out = image.crop(box) if box else image.copy()
    path = dest / (name or f"{stem}.png")
    out.save(path)
    return path


@pytest.fixture(scope="session")
def run_seglab():
    """The CLI runner: run_seglab("check", folder) -> CliResult (rc, stdout, stderr)."""
    return run_cli


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    assert (ISBI / "train" / "images" / "00.png").is_file(), f"bundled data missing at {ISBI}"
    return ISBI


@pytest.fixture(scope="session")
def isbi_subset(tmp_path_factory, isbi_dir) -> Path:
    """images/ + masks/ holding ISBI slices 00-04, top-left 128x128 crops of the real files."""
    root = tmp_path_factory.mktemp("isbi_subset")
    for i in range(5):
        for kind in ("images", "masks"):
            copy_isbi_crop("train", kind, f"{i:02d}", root / kind, (0, 0, 128, 128))
    return root


@dataclass
class TrainedRun:
    run_dir: Path
    config_file: Path
    result: CliResult

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"


TRAINED_EPOCHS = 8
TINY_CONFIG = """\
data:
  validation: 20
  crop: [64, 64]
model:
  base_channels: 8
  depth: 2
train:
  epochs: 3
  batch_size: 2
  learning_rate: 0.01
  augment: none
"""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, isbi_subset) -> TrainedRun:
    """ONE tiny U-Net trained through the CLI for the whole session: a YAML config whose epochs and
    base channels the flags override, 8 epochs on 4 ISBI crops (1 held out), 64x64 training crops."""
    work = tmp_path_factory.mktemp("trained")
    config_file = work / "tiny.yaml"
    config_file.write_text(TINY_CONFIG)
    run_dir = work / "run"
    result = run_cli("train", isbi_subset, "--config", config_file, "--out", run_dir,
                     "--epochs", TRAINED_EPOCHS, "--base-channels", 4, *TINY_FLAGS, cwd=work)
    return TrainedRun(run_dir, config_file, result)


@pytest.fixture(scope="session")
def checkpoint(trained_run) -> Path:
    """best.pt of the session's tiny model (binary, mask values {0, 255})."""
    r = trained_run.result
    assert r.rc == 0 and trained_run.best.is_file(), f"tiny training failed:\n{r.stdout}\n{r.stderr}"
    return trained_run.best


# ---- test_tracking.py: a real MLflow tracking server process ----------------------------------------
_MLFLOW_SERVER: dict = {}


def pytest_collection_finish(session) -> None:
    """Start the MLflow server as soon as test_tracking.py is selected: it takes 15-30 s to boot on a
    small machine, which the tests that run before that module then cover."""
    import importlib.util

    if importlib.util.find_spec("mlflow") and any(item.path.name == "test_tracking.py" for item in session.items):
        import tempfile

        from mlflow_server import MLflowServer

        _MLFLOW_SERVER["server"] = MLflowServer(Path(tempfile.mkdtemp(prefix="seglab-mlflow-")))


def pytest_sessionfinish(session, exitstatus) -> None:
    server = _MLFLOW_SERVER.pop("server", None)
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server():
    """The running MLflow server (MLflowServer: .uri); started when the tests were collected."""
    server = _MLFLOW_SERVER.get("server")
    if server is None:
        pytest.skip("mlflow is not installed (pip install 'seglab[mlflow]')")
    server.wait_until_up()
    return server


# ---- seglab serve: a real server process on a loopback port ------------------------------------------
SERVE_TOKEN = "test-token-0123"


@dataclass
class ServerProcess:
    """A `seglab serve` process started by a test: its base URL, token and what it printed."""

    process: subprocess.Popen
    url: str
    token: str | None
    stdout: list[str]
    stderr: list[str]

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a service manager stops it; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(*args, token: str | None = None, timeout: float = 90, program: Path | None = None,
                 cwd: Path | None = None) -> ServerProcess:
    """`seglab serve ARGS --port 0` in a fresh process; returns once it prints its address. `program`:
    another `seglab` command (an installed one) than this interpreter's `python -m seglab`."""
    import queue
    import threading

    env = {**os.environ, **SUBPROCESS_ENV}
    env.pop("SEGLAB_TOKEN", None)
    seglab = [str(program)] if program else [sys.executable, "-m", "seglab"]
    command = [*seglab, "serve", *[str(a) for a in args], "--port", "0"]
    if token:
        command += ["--token", token]
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    stdout, stderr, lines = [], [], queue.Queue()

    def drain(stream, into, announce):
        for line in stream:
            into.append(line)
            if announce:
                lines.put(line)
        if announce:
            lines.put(None)  # the process ended

    threading.Thread(target=drain, args=(process.stdout, stdout, True), daemon=True).start()
    threading.Thread(target=drain, args=(process.stderr, stderr, False), daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            process.kill()
            raise AssertionError(f"seglab serve printed no address in {timeout} s:\n{''.join(stderr)[-3000:]}") \
                from None
        if line is None:
            process.wait()
            raise AssertionError(f"seglab serve exited {process.returncode}:\n{''.join(stderr)[-3000:]}")
        if " at http://" in line:
            url = line.split(" at ", 1)[1].split("/ ", 1)[0]
            return ServerProcess(process, url, token, stdout, stderr)


@pytest.fixture(scope="session")
def served(checkpoint, trained_run) -> ServerProcess:
    """ONE server of the session's tiny model for the serve tests: a token, batches of up to 8 that
    wait 25 ms, float32 (only there does a batched forward pass round as a single one does), a 2 MB
    upload limit, 4 megapixels at most, and the session's run folder under --runs."""
    server = start_server("-m", checkpoint, "--device", "cpu", "--precision", "fp32", "--max-batch", 8,
                          "--max-wait-ms", 25, "--max-upload-mb", 2, "--max-pixels", 4_000_000,
                          "--runs", trained_run.run_dir.parent,
                          token=SERVE_TOKEN)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def serve_images(tmp_path_factory) -> dict[str, Path]:
    """A whole 512x512 ISBI test slice and an odd-sized 300x200 crop of another."""
    folder = tmp_path_factory.mktemp("serve_images")
    return {"whole": copy_isbi_crop("test", "images", "00", folder),
            "crop": copy_isbi_crop("test", "images", "01", folder, (17, 5, 317, 205), name="crop.png")}


@pytest.fixture(scope="session")
def served_predictions(checkpoint, serve_images, tmp_path_factory) -> dict[str, Path]:
    """What `seglab predict` writes for those files: masks, overlays and instances, with default
    options, and the crop's mask with flips TTA, 96-pixel tiles and threshold 0.4; in float32, as
    the session's server predicts."""
    out = tmp_path_factory.mktemp("predicted")
    plain = run_cli("predict", "-m", checkpoint, "-i", serve_images["whole"], serve_images["crop"], "-o", out / "plain",
                    "--overlay", "--instances", "--device", "cpu", "--precision", "fp32")
    options = run_cli("predict", "-m", checkpoint, "-i", serve_images["crop"], "-o", out / "options.png",
                      "--tta", "flips", "--tile", 96, "-t", 0.4, "--device", "cpu", "--precision", "fp32")
    assert plain.rc == 0 and options.rc == 0, plain.output + options.output
    return {"whole": out / "plain" / "00_mask.png", "crop": out / "plain" / "crop_mask.png",
            "whole_overlay": out / "plain" / "00_overlay.png", "crop_instances": out / "plain" / "crop_instances.png",
            "crop_options": out / "options.png"}
