"""Speed on the CPU (issue 22): precision and layout chosen from the machine, free memory read as the
kernel means it, the plan's probe, int8 exports that prove their masks, and the fastest path chosen."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import seglab
from conftest import TINY_FLAGS, assert_clean_failure, run_cli
from seglab.data.fingerprint import Fingerprint
from seglab.engine.plan import plan_rules
from seglab.inference.fastest import cpu_model_name, faster_export
from seglab.runtime import device as device_module
from seglab.runtime.device import available_ram, inference_precision, resolve_precision

CPU = torch.device("cpu")
GIB = 2**30


# ---- precision ------------------------------------------------------------------------------------
@pytest.mark.parametrize("feature, expected", [("AMX", torch.bfloat16), ("AVX512_BF16", torch.bfloat16),
                                               (None, None)])
def test_precision_auto_is_bf16_only_on_a_cpu_that_computes_it_natively(monkeypatch, feature, expected):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: feature)
    assert resolve_precision("auto", False, CPU) == expected
    assert resolve_precision("fp32", False, CPU) is None and resolve_precision("bf16", False, CPU) == torch.bfloat16
    assert resolve_precision(None, True, CPU) is None  # configs written before "auto": float32 on the CPU
    # predictions follow the precision the run validated in, where the CPU has it
    assert inference_precision("auto", "bf16", CPU) == expected
    assert inference_precision("auto", "fp32", CPU) is None and inference_precision("auto", None, CPU) is None
    plan = plan_rules(_fingerprint(), {"type": "cpu", "cores": 2, "bf16": feature}, {}, binary=True, train_images=25)
    assert plan.choices["train.precision"].value == ("bf16" if feature else "fp32")
    assert (feature or "no native bf16") in plan.choices["train.precision"].reason


def test_this_machines_bf16_is_what_torch_reports():
    feature = device_module.native_cpu_bf16()
    reported = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert (feature is not None) == bool(reported)


def test_bf16_training_reaches_the_float32_runs_dice(tmp_path, isbi_subset, monkeypatch):
    """The same tiny run in float32 and in bf16 autocast (weights, losses and BatchNorm statistics
    stay float32): validation Dice within noise of each other."""
    dice = {}
    for precision in ("fp32", "bf16"):
        run = seglab.train(isbi_subset, out=tmp_path / precision, model="unet", base_channels=8, depth=2,
                           crop=[64, 64], batch_size=2, epochs=6, learning_rate=0.01, augment="none",
                           validation=20, precision=precision, device="cpu", progress=False, log=lambda *a: None)
        dice[precision] = run.rows[-1]["val_dice"]
        state = torch.load(run.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        assert all(t.dtype in (torch.float32, torch.int64) for t in state.values())
    assert dice["fp32"] > 0.5 and abs(dice["bf16"] - dice["fp32"]) < 0.05, dice


# ---- free memory ------------------------------------------------------------------------------------
def _meminfo(tmp_path: Path, free_kib: int, available_kib: int | None) -> Path:
    lines = [f"MemTotal:       {24 * 2**20} kB", f"MemFree:        {free_kib} kB", "Cached:         2000000 kB"]
    if available_kib is not None:
        lines.append(f"MemAvailable:   {available_kib} kB")
    path = tmp_path / "meminfo"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_free_ram_counts_the_page_cache_the_kernel_can_drop(tmp_path):
    # a full page cache: 856 MB free, 22 GB available (seen on this project's machine)
    meminfo = _meminfo(tmp_path, 836_000, 22 * 2**20)
    no_cgroup = tmp_path / "no-cgroup"
    no_cgroup.write_text("")
    assert available_ram(meminfo, tmp_path, no_cgroup) == 22 * GIB
    old_kernel = _meminfo(tmp_path, 1_000_000, None)  # before MemAvailable: MemFree + Cached
    assert available_ram(old_kernel, tmp_path, no_cgroup) == (1_000_000 + 2_000_000) * 1024


def test_a_cgroup_limit_lowers_free_ram_v2_and_v1(tmp_path):
    meminfo = _meminfo(tmp_path, 836_000, 22 * 2**20)
    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text(f"{4 * GIB}\n")
    (v2 / "job" / "memory.current").write_text(f"{3 * GIB}\n")
    (v2 / "job" / "memory.stat").write_text(f"anon 100\ninactive_file {GIB}\n")
    (v2 / "memory.max").write_text("max\n")  # the root: no limit
    proc = tmp_path / "cgroup-v2"
    proc.write_text("0::/job\n")
    assert available_ram(meminfo, v2, proc) == 2 * GIB  # 4 GiB - (3 GiB used - 1 GiB reclaimable cache)
    v1 = tmp_path / "v1"
    (v1 / "memory" / "slurm" / "job").mkdir(parents=True)
    (v1 / "memory" / "slurm" / "memory.limit_in_bytes").write_text(f"{3 * GIB}\n")  # a parent's limit
    (v1 / "memory" / "slurm" / "memory.usage_in_bytes").write_text(f"{GIB}\n")
    (v1 / "memory" / "slurm" / "job" / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # unlimited
    proc_v1 = tmp_path / "cgroup-v1"
    proc_v1.write_text("9:cpu:/\n4:memory:/slurm/job\n")
    assert available_ram(meminfo, v1, proc_v1) == 2 * GIB


def test_ordinary_images_are_not_tiled_on_a_cpu_with_a_full_page_cache(checkpoint, tmp_path, monkeypatch):
    from seglab.inference import predictor as predictor_module

    meminfo = _meminfo(tmp_path, 836_000, 22 * 2**20)
    no_cgroup = tmp_path / "no-cgroup"
    no_cgroup.write_text("")
    monkeypatch.setattr(predictor_module, "free_memory", lambda device: available_ram(meminfo, tmp_path, no_cgroup))
    notes = []
    model = seglab.load(checkpoint, device="cpu", runtime="pytorch", log=notes.append)
    model.predict(np.zeros((512, 512), np.uint8))
    assert not any("tiles" in note for note in notes), notes
    # and MemFree alone (today's reading before the fix) would have tiled it
    monkeypatch.setattr(predictor_module, "free_memory", lambda device: 836_000 * 1024)
    model.predict(np.zeros((2048, 2048), np.uint8))
    assert any("tiles" in note for note in notes)


# ---- the plan's probe ---------------------------------------------------------------------------------
def _fingerprint() -> Fingerprint:
    shares = {"background": 0.5, "object": 0.5}
    return Fingerprint(images=25, median_size=(512, 512), min_size=(512, 512), channels=1, kind="grayscale",
                       intensity_mean=0.5, intensity_std=0.2, class_shares=shares,
                       object_diameter={name: 30.0 for name in shares}, object_counts={name: 10.0 for name in shares})


def test_the_probe_picks_the_faster_layout_and_its_speed_sets_the_schedule():
    measured = []

    def probe(values, channels_last):
        measured.append((values["model.name"], values["data.crop"], values["train.precision"], channels_last))
        return 20.0 if channels_last else 8.0

    device = {"type": "cpu", "cores": 2, "bf16": "AMX"}
    plan = plan_rules(_fingerprint(), device, {}, binary=True, train_images=25, cpu_probe=probe)
    chosen = {key: choice.value for key, choice in plan.choices.items()}
    assert measured == [("unet", [256, 256], "bf16", False), ("unet", [256, 256], "bf16", True)]
    assert chosen["train.channels_last"] is True and plan.device["probe_images_per_s"] == 20.0
    # 420 s at 20 images/s over 25 images: ~336 epochs, validated every ~34
    assert chosen["train.eval_every"] == 34
    slower = plan_rules(_fingerprint(), device, {"train.channels_last": False}, binary=True, train_images=25,
                        cpu_probe=probe)
    assert slower.choices["train.channels_last"].given and slower.device["probe_images_per_s"] == 8.0
    out_of_memory = plan_rules(_fingerprint(), device, {}, True, 25, cpu_probe=lambda values, layout: None)
    assert "probe_images_per_s" not in out_of_memory.device  # falls back to the measured constants


def test_the_plans_forecast_is_what_the_run_then_trains(tmp_path, isbi_dir):
    """The probe's images/s against the run's own, on a short budget: within 30%."""
    result = run_cli("train", isbi_dir, "--time-budget", "9", "--out", tmp_path / "run", "--val-files",
                     "28,29", "--eval-every", "1", *TINY_FLAGS)
    assert result.rc == 0, result.output
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    forecast = plan["device"]["probe_images_per_s"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steady = [row["images_per_s"] for row in rows[1:]] or [rows[0]["images_per_s"]]  # the first epoch warms up
    actual = float(np.median(steady))
    assert 0.7 < forecast / actual < 1.3, (forecast, actual, rows)
    assert plan["choices"]["train.channels_last"]["reason"].startswith("measured faster")


# ---- int8 exports and the fastest path ------------------------------------------------------------
@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """The session's tiny run (best.pt, split.json) copied, so exports beside it stay in this test."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("best.pt", "split.json"):
        shutil.copy(trained_run.run_dir / name, folder / name)
    return folder / "best.pt"


def test_int8_export_keeps_the_runs_dice_and_the_checkpoint_then_runs_the_fastest_path(run_copy, isbi_subset):
    result = run_cli("export", "-m", run_copy, "--quantize", "int8", "--max-dice-drop", "0.05")
    assert result.rc == 0, result.output
    assert "int8: mean Dice" in result.stdout and "W:onnxruntime" not in result.output
    int8 = run_copy.with_suffix(".int8.onnx")
    metadata = seglab.load(int8, device="cpu").model.exported.metadata
    parity = metadata["quantization"]["parity"]
    assert parity["dice_drop"] <= 0.05 and parity["mask_agreement"] > 0.9 and "validation images" in parity["images"]
    assert metadata["source"]["checkpoint"] == "best.pt" and metadata["speed"]["cpu"] == cpu_model_name()
    assert not [p for p in run_copy.parent.iterdir() if p.name.startswith(".")]  # no temporary files left
    image = isbi_subset / "images" / "00.png"
    found = faster_export(run_copy)
    notes = []
    model = seglab.load(run_copy, device="cpu", log=notes.append)
    if found is None:  # PyTorch measured faster at export on this machine: it stays
        assert model.runtime.startswith("pytorch") and not notes
    else:
        assert model.info["format"] == "onnx" and notes and notes[0].startswith(f"using {found[0].name}")
    pytorch = seglab.load(run_copy, device="cpu", runtime="pytorch")
    assert pytorch.runtime.startswith("pytorch")
    agree = (model.predict(image).classes == pytorch.predict(image).classes).mean()
    assert agree > 0.9
    # another checkpoint in that folder (same name, other weights) does not take the export
    payload = torch.load(run_copy, map_location="cpu", weights_only=True)
    payload["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    torch.save(payload, run_copy)
    assert faster_export(run_copy) is None


def test_a_broken_calibration_is_refused_and_writes_nothing(run_copy, tmp_path):
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(blank)  # white: no contrast to calibrate on
    result = run_cli("export", "-m", run_copy, "--quantize", "int8", "--calibration-images", blank)
    assert_clean_failure(result)
    assert "refused: mean Dice" in result.stderr and "nothing was written" in result.stderr
    assert sorted(p.name for p in run_copy.parent.iterdir()) == ["best.pt", "split.json"]


def test_int8_outside_a_run_folder_needs_calibration_images(run_copy, tmp_path):
    lone = tmp_path / "lone.pt"
    shutil.copy(run_copy, lone)
    result = run_cli("export", "-m", lone, "--quantize", "int8")
    assert_clean_failure(result)
    assert "--calibration-images" in result.stderr
    result = run_cli("export", "-m", lone, "--quantize", "int8", "--format", "torchscript")
    assert_clean_failure(result)
    assert "--format onnx" in result.stderr


# ---- torch.compile ------------------------------------------------------------------------------
def test_a_compiled_run_compiles_once_outside_its_time_and_never_recompiles(tmp_path, isbi_subset, monkeypatch):
    """Dynamo's own counters over a compiled run of two epochs whose last batch would be short (5
    images at batch 2): one compiled frame, no recompilation. The backend is Dynamo's "aot_eager"
    (real graph capture and guards, no C++ code generation, which takes minutes on two cores)."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: real_compile(model, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    notes = []
    run = seglab.train(isbi_subset, out=tmp_path / "run", base_channels=4, depth=2, crop=[64, 64], batch_size=2,
                       epochs=2, augment="light", validation=0, compile=True, device="cpu", progress=False,
                       log=notes.append)
    compiled = [note for note in notes if note.startswith("torch.compile")]
    assert len(compiled) == 1 and "compiled for batches of (2, 1, 64, 64)" in compiled[0], notes
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"], dict(counters)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["compile_seconds"] > 0
    torch._dynamo.reset()


def test_compiled_predictions_agree_with_eager_ones(checkpoint):
    """torch.compile (inductor's C++ code on the CPU) computes the session's model as eager PyTorch
    does, to 1e-5 in probability in float32 (operations fused, sums reordered); the runtime says it
    is compiled. One image size: each new shape costs another compilation."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (96, 80), dtype=np.uint8)
    eager = seglab.load(checkpoint, device="cpu", precision="fp32", log=lambda *_: None)
    compiled = seglab.load(checkpoint, device="cpu", precision="fp32", compile=True, log=lambda *_: None)
    assert compiled.runtime == "pytorch fp32, compiled" and eager.runtime == "pytorch fp32"
    expected, got = eager.predict(image).probabilities, compiled.predict(image).probabilities
    assert np.abs(got - expected).max() <= 1e-5
    torch._dynamo.reset()


def test_servers_batch_by_default_where_batches_measured_faster():
    """Batches of 8 on a GPU and a bf16 CPU (1.7x the requests/s of single passes at 16 clients);
    single passes on a float32 CPU; --max-batch always wins."""
    from seglab.serve.options import ServeOptions

    assert ServeOptions().batch_limit("cpu", bf16=True) == 8 and ServeOptions().batch_limit("cuda", bf16=False) == 8
    assert ServeOptions().batch_limit("cpu", bf16=False) == 1
    assert ServeOptions(max_batch=3).batch_limit("cpu", bf16=True) == 3
