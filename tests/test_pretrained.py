"""Pretrained encoders with the network off: a weights folder, the one line when a file is missing, checked fetching.

The weights written here hold random values in the exact files and layout seglab's loader reads
(SMP 0.6's: smp-hub/ENCODER.WEIGHTS/model.safetensors and config.json; timm's:
timm/MODEL.TAG/model.safetensors). Subprocesses run with every socket refused and empty caches,
so any download attempt would fail them; the fetch test talks to a local stand-in for the Hub.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import seglab
from conftest import TINY_FLAGS, assert_clean_failure, run_cli, run_main
from seglab.data.normalization import fixed_normalization

RESNET18 = "smp-hub/resnet18.imagenet"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
NO_NETWORK = '''\
import socket
def _refuse(*args, **kwargs):
    raise OSError("the network is off in this test")
socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


def write_resnet18_weights(folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random torchvision ResNet-18 weights (classifier included, as on the Hub) and their config.json.

    A fresh initialisation whose BatchNorm statistics are measured on random images, as training
    would leave them (weights with their initial statistics blow up in eval mode), then moved a
    little so that no value is a default."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.momentum = None  # running statistics: the plain average over the batches below
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64))
    state = {k: (v * (1 + 0.05 * torch.rand_like(v)) if v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    (folder / RESNET18).mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / RESNET18 / "model.safetensors"))
    (folder / RESNET18 / "config.json").write_text(json.dumps({"mean": MEAN, "std": STD, "input_range": [0, 1],
                                                                "input_space": "RGB"}))
    return state


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory) -> dict:
    """Environment of a process that cannot reach any network and has empty weight caches."""
    root = tmp_path_factory.mktemp("offline")
    (root / "sitecustomize.py").write_text(NO_NETWORK)
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
            "HF_HOME": str(root / "hf"), "TORCH_HOME": str(root / "torch"), "SEGLAB_WEIGHTS_DIR": ""}


TRAIN = ("--model", "smp-unet", "--encoder", "resnet18", "--encoder-weights", "imagenet", "--epochs", 1,
         "--crop", 64, "--batch-size", 2, "--augment", "none", *TINY_FLAGS)


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, isbi_subset, offline_env):
    """smp-unet on ResNet-18 weights from a weights folder, the encoder frozen for its one epoch, offline."""
    work = tmp_path_factory.mktemp("pretrained")
    weights = write_resnet18_weights(work / "weights")
    result = run_cli("train", isbi_subset, *TRAIN, "--weights-dir", work / "weights", "--freeze-encoder-epochs", 1,
                     "--out", work / "run", env=offline_env)
    assert result.rc == 0, result.output
    return work, weights


def test_training_loads_encoder_weights_from_the_weights_folder_offline(pretrained_run):
    work, weights = pretrained_run
    payload = torch.load(work / "run" / "best.pt", map_location="cpu", weights_only=True)
    state = payload["state_dict"]
    # ISBI slices are gray: the first convolution is the sum of the file's RGB filters.
    assert torch.equal(state["network.encoder.conv1.weight"], weights["conv1.weight"].sum(1, keepdim=True))
    # Frozen for its only epoch: weights and BatchNorm statistics are the file's.
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.weight", "layer3.0.bn1.running_mean", "bn1.running_var"):
        assert torch.equal(state[f"network.encoder.{key}"], weights[key]), key
    # The encoder's ImageNet normalisation, averaged for one channel, is the checkpoint's preprocessing ...
    assert payload["preprocess"]["normalization"] == {"mean": [sum(MEAN) / 3], "std": [sum(STD) / 3]}
    # ... and the checkpoint rebuilds its model without the weights options (nothing to download).
    assert payload["model"]["kwargs"] == {"in_channels": 1, "num_classes": 1, "encoder": "resnet18",
                                          "encoder_depth": 5}


def test_without_the_weights_the_run_stops_with_one_line_naming_the_file(isbi_subset, tmp_path, offline_env):
    result = run_cli("train", isbi_subset, *TRAIN, "--out", tmp_path / "run", env=offline_env)
    assert_clean_failure(result)
    (line,) = result.stderr.strip().splitlines()
    assert "not in the Hugging Face cache" in line and "cannot be downloaded" in line
    assert f"DIR/{RESNET18}/model.safetensors" in line and "`seglab weights fetch resnet18 --dest DIR`" in line
    assert "--weights-dir DIR" in line and f"https://huggingface.co/{RESNET18}/resolve/" in line
    assert not (tmp_path / "run").exists()

    empty = tmp_path / "weights"
    empty.mkdir()
    result = run_cli("train", isbi_subset, *TRAIN, "--weights-dir", empty, "--out", tmp_path / "run", env=offline_env)
    assert_clean_failure(result)
    (line,) = result.stderr.strip().splitlines()
    assert f"'{empty / RESNET18 / 'model.safetensors'}' is missing" in line
    assert f"`seglab weights fetch resnet18 --dest {empty}`" in line


def test_a_checkpoint_of_a_pretrained_smp_model_predicts_where_nothing_can_be_downloaded(pretrained_run, tmp_path,
                                                                                     offline_env):
    work, _ = pretrained_run
    slice_ = np.asarray(Image.open(Path(__file__).resolve().parents[1] / "data/isbi2012/test/images/00.png"))
    big = np.pad(slice_, ((0, 1001 - 512), (0, 1403 - 512)), mode="reflect")  # 1001 x 1403: no multiple of 32
    Image.fromarray(big).save(tmp_path / "big.png")
    result = run_cli("predict", "-m", work / "run" / "best.pt", "-i", tmp_path / "big.png", "-o", tmp_path / "m.png",
                     "--device", "cpu", env=offline_env)
    assert result.rc == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "m.png"))
    assert mask.shape == (1001, 1403) and set(np.unique(mask)) <= {0, 255}


def test_the_encoders_normalisation_is_applied_by_the_predictor_and_the_exported_graph(pretrained_run, tmp_path):
    work, _ = pretrained_run
    predictor = seglab.load(work / "run" / "best.pt", precision="fp32")  # as the exported graph computes
    stats = {"mean": [sum(MEAN) / 3], "std": [sum(STD) / 3]}
    assert predictor.normalization == stats
    image = np.array(Image.open(Path(__file__).resolve().parents[1] / "data/isbi2012/test/images/03.png"))[:75, :99]
    x = (torch.from_numpy(image).float()[None, None] / 255 - stats["mean"][0]) / stats["std"][0]
    with torch.no_grad():
        expected = torch.sigmoid(predictor.model(x))[0].numpy()
    np.testing.assert_allclose(predictor.predict(image).probabilities, expected, atol=1e-6)
    report = seglab.export(work / "run" / "best.pt", "onnx", tmp_path / "m.onnx", parity_images=[image])
    assert report["metadata"]["normalization"] == stats and report["max_abs_diff"] <= 1e-4
    exported = seglab.load(tmp_path / "m.onnx").predict(image).probabilities
    np.testing.assert_allclose(exported, expected, atol=1e-4)


def test_timm_encoders_and_many_channel_inputs_start_from_the_folders_weights(tmp_path):
    import timm

    torch.manual_seed(1)
    timm_state = {k: torch.randn_like(v) if v.is_floating_point() else v
                  for k, v in timm.create_model("test_resnet", pretrained=False).state_dict().items()}
    (tmp_path / "timm" / "test_resnet.r160_in1k").mkdir(parents=True)
    save_file(timm_state, str(tmp_path / "timm" / "test_resnet.r160_in1k" / "model.safetensors"))
    model = seglab.build_model("smp-fpn", in_channels=1, num_classes=2, encoder="tu-test_resnet",
                               encoder_weights="imagenet", weights_dir=str(tmp_path))
    first = model.encoder.model.state_dict()["conv1.0.weight"]
    assert torch.allclose(first, timm_state["conv1.0.weight"].sum(1, keepdim=True))
    assert model.input_normalization == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # timm's, for this model

    weights = write_resnet18_weights(tmp_path)
    model = seglab.build_model("smp-deeplabv3plus", in_channels=4, num_classes=2, encoder="resnet18",
                               encoder_weights="imagenet", weights_dir=str(tmp_path))
    expected = weights["conv1.weight"][:, [0, 1, 2, 0]] * 0.75  # R, G, B, R scaled by 3 / 4
    assert torch.allclose(model.encoder.conv1.weight, expected)
    assert fixed_normalization(MEAN, STD, 4) == {"mean": MEAN + MEAN[:1], "std": STD + STD[:1]}
    assert fixed_normalization(MEAN, STD, 3) == {"mean": MEAN, "std": STD}


# ---- fetching, through a local stand-in for the Hugging Face Hub -------------------------------------
class FakeHub(http.server.BaseHTTPRequestHandler):
    """/REPO/resolve/REV/FILE as the Hub answers it: large files redirect to their storage with their
    SHA-256 in X-Linked-Etag, small files come straight with their git blob SHA-1 as ETag. `lie`
    makes the storage send other bytes than those published."""

    files: dict[str, bytes] = {}
    downloads: list[str] = []
    lie = False

    def log_message(self, *args):
        pass

    def _send(self, data: bytes, body: bool, headers: dict) -> None:
        self.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _answer(self, body: bool) -> None:
        if self.path.startswith("/storage/"):
            name = self.path.removeprefix("/storage/")
            self.downloads += [name] if body else []
            return self._send(self.files[name] + (b"tampered" if self.lie else b""), body, {})
        repo, _, rest = self.path.lstrip("/").partition("/resolve/")
        name = f"{repo}/{rest.partition('/')[2]}"
        if name not in self.files:
            return self.send_error(404)
        data = self.files[name]
        if name.endswith(".json"):
            self.downloads += [name] if body else []
            git_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            return self._send(data, body, {"ETag": f'"{git_id}"'})
        self.send_response(302)
        self.send_header("Location", f"/storage/{name}")
        self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.end_headers()

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)


@pytest.fixture
def fake_hub(tmp_path):
    source = tmp_path / "hub"
    write_resnet18_weights(source)
    FakeHub.files = {f"{RESNET18}/{name}": (source / RESNET18 / name).read_bytes()
                     for name in ("model.safetensors", "config.json")}
    FakeHub.downloads, FakeHub.lie = [], False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_weights_fetch_checks_every_file_against_its_published_hash(fake_hub, tmp_path, isbi_subset, monkeypatch):
    dest = tmp_path / "weights"
    monkeypatch.setenv("HF_ENDPOINT", fake_hub)  # the command's own entry point, in this process
    result = run_main("weights", "fetch", "resnet18", "--dest", dest)
    assert result.rc == 0, result.output
    for name, data in FakeHub.files.items():
        assert (dest / name).read_bytes() == data
    sums = dict(reversed(line.split("  ")) for line in (dest / "SHA256SUMS").read_text().splitlines())
    assert sums == {name: hashlib.sha256(data).hexdigest() for name, data in FakeHub.files.items()}
    again = run_main("weights", "fetch", "resnet18", "--dest", dest)
    assert again.rc == 0 and again.stdout.count("already there") == 2 and len(FakeHub.downloads) == 2

    # A copy damaged on its way to the air-gapped machine is refused by its SHA256SUMS line.
    tensors = load_file(str(dest / RESNET18 / "model.safetensors"))
    tensors["conv1.weight"][0, 0, 0, 0] += 1
    save_file(tensors, str(dest / RESNET18 / "model.safetensors"))
    damaged = run_main("train", isbi_subset, *TRAIN, "--weights-dir", dest, "--out", tmp_path / "run")
    assert_clean_failure(damaged)
    assert "is damaged: its SHA-256 differs from the one in" in damaged.stderr

    # Bytes that do not match the published hash are never kept.
    FakeHub.lie = True
    other = tmp_path / "other"
    refused = run_main("weights", "fetch", "resnet18", "--dest", other)
    assert_clean_failure(refused)
    assert "differs from the published" in refused.stderr and "nothing was kept" in refused.stderr
    assert not (other / RESNET18 / "model.safetensors").exists()
    assert not [p for p in other.rglob("*") if p.is_file()]


def test_weights_fetch_refuses_unknown_encoders_and_weights_before_any_download(tmp_path):
    result = run_main("weights", "fetch", "resnet18", "resnt50", "--dest", tmp_path / "w")
    assert_clean_failure(result)
    assert "unknown encoder 'resnt50'" in result.stderr and not (tmp_path / "w").exists()
    result = run_main("weights", "fetch", "resnet34", "--weights", "ssl", "--dest", tmp_path / "w")
    assert_clean_failure(result)
    assert "encoder resnet34 has no 'ssl' weights; SMP has: imagenet" in result.stderr


PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads_and_builds_its_model(preset):
    from seglab.config import load_config

    config = load_config(preset)
    options = {k: v for k, v in config.model.resolved().items() if k not in ("encoder_weights", "weights_dir")}
    options.pop("pretrained_backbone", None)  # no weights are fetched here: the architecture is what is checked
    model = seglab.build_model(config.model.name, in_channels=3, num_classes=len(config.data.class_names or [1, 2]),
                               **options)
    assert sum(p.numel() for p in model.parameters()) > 0
    if preset.stem.endswith("-pretrained"):
        assert config.model.resolved()["encoder_weights"] == "imagenet" and config.data.normalization == "auto"


def test_a_pretrained_preset_offline_names_the_weights_to_fetch(isbi_subset, tmp_path, offline_env):
    preset = Path(__file__).resolve().parents[1] / "configs" / "carvana-pretrained.yaml"
    result = run_cli("train", isbi_subset, "--config", preset, "--out", tmp_path / "run", env=offline_env)
    assert_clean_failure(result)
    (line,) = result.stderr.strip().splitlines()
    assert "smp-hub/resnet34.imagenet/model.safetensors" in line and "seglab weights fetch resnet34" in line
    assert not (tmp_path / "run").exists()
