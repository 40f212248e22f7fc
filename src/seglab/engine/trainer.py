"""fit(config) -> History: the training loop, validation, checkpoints, logs and curves."""
from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from seglab.config import RunConfig, dump_config, load_config, override
from seglab.data.augment import BatchAugmenter, augment_preset
from seglab.data.datasets import SegmentationDataset
from seglab.data.loaders import LoaderBatches, ResidentBatches, stack_dataset
from seglab.engine import distributed
from seglab.engine.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint, unwrap_model
from seglab.engine.evaluate import evaluate
from seglab.engine.setup import (LearningRateSchedule, make_loss, make_model, make_optimizer, plan_data,
                                 resolve_device, seed_everything)
from seglab.errors import SeglabError

# Keep the training set on the device when it takes at most this share of free memory.
RESIDENT_FRACTION = 0.25
MAX_BAD_STEPS = 20


@dataclass
class History:
    run_dir: Path
    epochs: list[dict] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None


def _monitor_mode(monitor: str) -> str:
    return "min" if monitor.endswith("loss") or monitor.endswith("error") else "max"


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**30


def _new_run_dir(config: RunConfig) -> Path:
    if config.out:
        return Path(config.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(config.data.root).resolve().name}-{config.model.name}-{stamp}"


def _rng_state() -> dict:
    state = np.random.get_state(legacy=False)
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"bit_generator": state["bit_generator"], "key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
                      "pos": int(state["state"]["pos"]), "has_gauss": int(state["has_gauss"]),
                      "gauss": float(state["gauss"])},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """One training run. Only rank 0 writes files, logs and draws progress bars."""

    def __init__(self, config: RunConfig, resume_from: Path | None = None, progress: bool = True,
                 log=print):
        self.dist = distributed.setup(resolve_device(config.train.device).type)
        device = resolve_device(config.train.device)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.config = config
        self.log = log if self.dist.is_main else (lambda *a, **k: None)
        self.progress = progress and self.dist.is_main
        seed_everything(config.train.seed)
        self.plan = plan_data(config)
        cm = self.plan.class_map
        self.model, self.model_kwargs = make_model(config, self.plan.channels, cm.num_outputs)
        if config.train.load:
            self._load_initial_weights(Path(config.train.load))
        self.model.to(device)
        self.ddp_model = self.model
        if self.dist.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.loss_fn = make_loss(config, cm).to(device)
        self.optimizer = make_optimizer(config, self.model)
        monitor_mode = _monitor_mode(config.train.monitor)
        self.schedule = LearningRateSchedule(self.optimizer, config.train.scheduler, monitor_mode,
                                             config.train.patience)
        self.monitor_mode = monitor_mode
        amp_dtype = None
        if config.train.amp and device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif config.train.amp:
            self.log("note: --amp has no effect on the CPU; training in float32")
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.augmenter = BatchAugmenter(augment_preset(config.train.augment),
                                        seed=config.train.seed * 1000 + self.dist.rank)
        self.crop = tuple(config.data.crop) if config.data.crop else None
        if self.crop and len(self.crop) == 1:
            self.crop = (self.crop[0], self.crop[0])
        self.train_batches = self._make_train_batches()
        self.val_dataset = (SegmentationDataset(self.plan.val_pairs, cm, self.plan.channels, config.data.scale,
                                                config.data.normalization, cache=True)
                            if self.plan.val_pairs else None)
        self.start_epoch, self.step, self.elapsed = 0, 0, 0.0
        self.history_rows: list[dict] = []
        self.best: float | None = None
        self.run_dir = Path(distributed.broadcast_object(str(resume_from or _new_run_dir(config))))
        if resume_from is not None:
            self._resume(resume_from)
        elif self.dist.is_main and (self.run_dir / "last.pt").exists():
            raise SeglabError(f"run folder '{self.run_dir}' already holds a run: pass --resume "
                              f"{self.run_dir} to continue it, or choose another --out")

    # ---- setup helpers ------------------------------------------------------------------------
    def _load_initial_weights(self, path: Path) -> None:
        payload = load_checkpoint(path)
        state = payload["state_dict"]
        own = self.model.state_dict()
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if mismatched or set(state) != set(own):
            raise SeglabError(f"--load '{path}' does not fit this model ({payload['model']['name']} "
                              f"{payload['model']['kwargs']} vs {self.model_kwargs}): train a matching model")
        self.model.load_state_dict(state)
        self.log(f"initial weights from {path}")

    def _make_train_batches(self):
        c, plan = self.config, self.plan
        dataset = SegmentationDataset(plan.train_pairs, plan.class_map, plan.channels, c.data.scale,
                                      c.data.normalization, crop=None, cache=True, seed=c.train.seed)
        first_image = dataset.load(0)[0]
        estimate = first_image.numel() * 4 * 3 * len(dataset)  # image + mask (int64 = 2 floats)
        if estimate < RESIDENT_FRACTION * _free_memory(self.device):
            stacked = stack_dataset(dataset)
            if stacked is not None:
                images, masks = stacked
                self.log(f"training set resident on {self.device.type}: {tuple(images.shape)}")
                return ResidentBatches(images.to(self.device), masks.to(self.device), None,
                                       c.train.batch_size, c.train.seed, self.dist.rank, self.dist.world_size)
        dataset = SegmentationDataset(plan.train_pairs, plan.class_map, plan.channels, c.data.scale,
                                      c.data.normalization, crop=self.crop, seed=c.train.seed)
        self.crop = None  # the dataset crops; the augmenter keeps the size
        return LoaderBatches(dataset, c.train.batch_size, self.device, c.data.workers, c.train.seed,
                             self.dist.rank, self.dist.world_size)

    def _resume(self, run_dir: Path) -> None:
        payload = load_checkpoint(run_dir / "last.pt")
        state = payload.get("train_state")
        if state is None:
            raise SeglabError(f"'{run_dir / 'last.pt'}' holds no training state to resume from")
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.augmenter.load_state_dict(state["augmenter"])
        _set_rng_state(state["rng"])
        self.start_epoch = payload["epoch"] + 1
        self.step = payload["step"]
        self.elapsed = state["elapsed"]
        self.best = state["best"]
        self.history_rows = list(state["history"])
        self.log(f"resuming {run_dir} after epoch {payload['epoch'] + 1}")

    # ---- checkpoints --------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, metrics: dict, with_state: bool) -> dict:
        c, cm = self.config, self.plan.class_map
        train_state = None
        if with_state:
            train_state = {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                           "scaler": self.scaler.state_dict(), "augmenter": self.augmenter.state_dict(),
                           "rng": _rng_state(), "elapsed": self.elapsed, "best": self.best,
                           "history": self.history_rows}
        preprocess = {"channels": self.plan.channels, "scale": c.data.scale,
                      "normalization": c.data.normalization, "threshold": c.train.threshold}
        return make_checkpoint(self.model, c.model.name, self.model_kwargs, cm, preprocess, epoch, self.step,
                               metrics, train_state)

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> History:
        c = self.config
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(c))
        writer = self._tensorboard()
        cm = self.plan.class_map
        global_batch = c.train.batch_size * self.dist.world_size
        self.log(f"run {self.run_dir}: {len(self.plan.train_pairs)} train / {len(self.plan.val_pairs)} val images, "
                 f"classes {cm.describe()}, {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters, "
                 f"device {self.device}, global batch {global_batch}")
        bad_steps = 0
        total_steps = c.train.epochs * len(self.train_batches)
        for epoch in range(self.start_epoch, c.train.epochs):
            started = time.perf_counter()
            self.train_batches.set_epoch(epoch)
            self.model.train()
            loss_sum, loss_count, images_seen = torch.zeros((), device=self.device), 0, 0
            bar = tqdm(total=len(self.train_batches), desc=f"epoch {epoch + 1}/{c.train.epochs}", unit="batch",
                       disable=not self.progress, leave=False, file=sys.stderr, dynamic_ncols=True)
            for images, masks, weights in self.train_batches:
                images, masks, weights = self.augmenter(images, masks, weights, out_size=self.crop)
                with self.autocast():
                    loss = self._training_loss(self.ddp_model(images), masks, weights)
                if not torch.isfinite(loss):
                    bad_steps += 1
                    self.log(f"warning: non-finite loss at step {self.step}; step skipped")
                    if bad_steps >= MAX_BAD_STEPS:
                        raise SeglabError(f"{bad_steps} non-finite losses in a row: training diverged; lower "
                                          f"--learning-rate and --resume {self.run_dir} (last.pt is intact)")
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                bad_steps = 0
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.step += 1
                loss_sum += loss.detach()
                loss_count += 1
                images_seen += images.shape[0]
                now = self.elapsed + time.perf_counter() - started
                progress = max(self.step / max(total_steps, 1), now / c.train.max_time if c.train.max_time else 0)
                self.schedule.step_progress(progress)
                if self.progress and (loss_count % 5 == 0 or loss_count == len(self.train_batches)):
                    bar.set_postfix(loss=f"{(loss_sum / loss_count).item():.4f}",
                                    img_s=f"{images_seen * self.dist.world_size / (time.perf_counter() - started):.1f}")
                bar.update(1)
            bar.close()
            train_loss = distributed.all_reduce_sum(
                torch.stack([loss_sum.double(), torch.tensor(float(loss_count), device=self.device).double()]))
            epoch_time = time.perf_counter() - started
            self.elapsed += epoch_time
            row = {"epoch": epoch + 1, "step": self.step, "time": round(self.elapsed, 2),
                   "train_loss": (train_loss[0] / train_loss[1].clamp_min(1)).item(),
                   "lr": self.optimizer.param_groups[0]["lr"],
                   "images_per_s": images_seen * self.dist.world_size / max(epoch_time, 1e-9)}
            last_epoch = epoch + 1 == c.train.epochs or (c.train.max_time and self.elapsed >= c.train.max_time)
            if self.val_dataset is not None and ((epoch + 1) % c.train.eval_every == 0 or last_epoch):
                row.update(self._validate())
            self._end_epoch(epoch, row, writer)
            if last_epoch:
                break
        if writer is not None:
            writer.close()
        if self.dist.is_main:
            self._write_curves()
        distributed.barrier()
        return History(self.run_dir, self.history_rows, self.best,
                       next((r["epoch"] for r in self.history_rows if r.get(c.train.monitor) == self.best), None))

    def _training_loss(self, output, masks: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Loss of the main output, plus half the auxiliary head's loss when the model has one."""
        if isinstance(output, dict):
            return self.loss_fn(output["out"], masks, weights) + 0.5 * self.loss_fn(output["aux"], masks, weights)
        return self.loss_fn(output, masks, weights)

    def _validate(self) -> dict:
        cm = self.plan.class_map
        result = evaluate(self.model, self.val_dataset, self.loss_fn, cm, self.device, self.config.train.threshold,
                          self.dist.rank, self.dist.world_size, self.autocast())
        s = result.scores
        return {"val_loss": result.loss, "val_dice": s["mdice"], "val_iou": s["miou"], "val_miou": s["miou"],
                "val_pixel_error": s["pixel_error"], "val_dice_per_class": s["dice"], "val_iou_per_class": s["iou"]}

    def _end_epoch(self, epoch: int, row: dict, writer) -> None:
        c = self.config
        monitored = row.get(c.train.monitor)
        if monitored is not None:
            self.schedule.step_metric(monitored)
        improved = monitored is not None and math.isfinite(monitored) and (
            self.best is None or (monitored > self.best if self.monitor_mode == "max" else monitored < self.best))
        if improved:
            self.best = monitored
        self.history_rows.append(row)
        if not self.dist.is_main:
            return
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        if improved or self.val_dataset is None:
            save_checkpoint(self._checkpoint(epoch, metrics, with_state=False), self.run_dir / "best.pt")
        save_checkpoint(self._checkpoint(epoch, metrics, with_state=True), self.run_dir / "last.pt")
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if writer is not None:
            for key, value in metrics.items():
                if key not in ("epoch", "step"):
                    writer.add_scalar(key.replace("val_", "val/").replace("train_", "train/"), value, row["step"])
        parts = [f"epoch {row['epoch']}/{c.train.epochs}", f"train_loss {row['train_loss']:.4f}"]
        if "val_loss" in row:
            parts += [f"val_loss {row['val_loss']:.4f}", f"dice {row['val_dice']:.4f}", f"iou {row['val_iou']:.4f}",
                      f"pixel_error {row['val_pixel_error']:.4f}"]
        parts += [f"lr {row['lr']:.2e}", f"{row['images_per_s']:.1f} img/s", f"{row['time']:.1f}s"]
        self.log("  ".join(parts) + ("  *best*" if improved else ""))

    def _tensorboard(self):
        if not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("note: tensorboard is not installed; no event files are written")
            return None
        return SummaryWriter(log_dir=str(self.run_dir))

    def _write_curves(self) -> None:
        from seglab.viz.plots import plot_curves

        if self.history_rows:
            plot_curves(self.history_rows, self.run_dir / "curves.png")


def fit(config: RunConfig, progress: bool = True, log=print) -> History:
    """Train a model as `config` says; returns the per-epoch history and the run folder."""
    try:
        return Trainer(config, progress=progress, log=log).fit()
    finally:
        distributed.teardown()


def resume(run_dir: str | Path, updates: dict | None = None, progress: bool = True, log=print) -> History:
    """Continue the run in `run_dir` from its last.pt, with its own config.yaml (plus `updates`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "last.pt").is_file():
        raise SeglabError(f"'{run_dir}' is not a run folder with config.yaml and last.pt: nothing to resume")
    config = override(load_config(run_dir / "config.yaml"), dict(updates or {}))
    try:
        return Trainer(config, resume_from=run_dir, progress=progress, log=log).fit()
    finally:
        distributed.teardown()
