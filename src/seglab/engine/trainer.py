"""Trainer: one training run's loop, validation, checkpoints and logs (`engine.runs` opens and closes it)."""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from seglab.data.augment import BatchAugmenter
from seglab.engine import distributed, train_state
from seglab.engine.builders import input_normalization, load_initial_weights, make_model, make_train_batches
from seglab.engine.callbacks import Callbacks, TrainingRun
from seglab.engine.checkpoint_schedule import CheckpointSchedule
from seglab.engine.compile_warmup import CompileWarmup
from seglab.engine.encoder_policy import EncoderPolicy
from seglab.engine.guards import check_weights_finite, out_of_memory, read_losses
from seglab.engine.history import DeviceLossTally, EpochTally, History, TrainingClock
from seglab.engine.optimisation import make_optimisation
from seglab.engine.recipe import Recipe
from seglab.engine.rng import rng_state, seed_everything, set_rng_state
from seglab.engine.run_folder import RunFolderLock, default_run_dir, restarted_by_torchrun
from seglab.engine.runlog import RunLog
from seglab.engine.train_state import TrainState
from seglab.engine.training_bar import TrainingBar, shown_epochs
from seglab.engine.validation import Validation, held_out_images, validate
from seglab.errors import SeglabError
from seglab.runtime.device import (
    default_channels_last,
    describe_precision,
    is_out_of_memory,
    resolve_device,
    resolve_precision,
)

LOG_EVERY = 10  # optimizer steps between host reads of the loss (progress bar, NaN checks)


class Trainer:
    """One training run. Only rank 0 writes files, logs and draws progress bars.

    A run is a sequence of periods, each closed by a metrics row, the schedule's and early
    stopping's look at the monitored metric, and best.pt/last.pt: with `--eval-every N` a period
    is an epoch (validated every N epochs); with `--eval-every "N steps"` it is N optimizer steps,
    each validated, whatever the epoch boundaries.

    It trains `recipe` as it is: its config, split, class map and channels, and the pixels its
    preparation decoded; it never looks for the data again.
    """

    def __init__(self, recipe: Recipe, resume_from: Path | None = None, progress: bool = True, log=print,
                 callbacks: Callbacks | None = None):
        # What this run changes in the process, put back by close(): the process group (when this
        # trainer joined it), cuDNN autotuning and the global random generators.
        self._saved_rng, self._saved_cudnn = rng_state(), torch.backends.cudnn.benchmark
        config = recipe.config
        device = resolve_device(config.train.device)
        self._owns_group = not distributed.initialized()
        self.dist = distributed.setup(device.type)
        try:
            if device.type == "cuda" and self.dist.enabled:
                device = torch.device("cuda", self.dist.local_rank)
            self.device, self.config, self.recipe = device, config, recipe
            self.log = log if self.dist.is_main else (lambda *a, **k: None)
            self.eval_count, self.eval_unit = config.train.evaluation
            self.progress = progress and self.dist.is_main
            self.callbacks = callbacks or Callbacks()
            self.bar = TrainingBar(self.progress, config.train.time_budget, shown_epochs(recipe))
            seed_everything(config.train.seed)
            self.compiles = config.train.compile
            self._build_model()
            self._build_optimisation()
            self._build_data()
            # what validation reads later stays decoded; the rest is in the training batches now
            recipe.files.release({path for pair in (self.val_images.pairs if self.val_images else [])
                                  for path in (pair.image, pair.mask)})
            self._open_run_folder(resume_from)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Leave the process as it was: the process group torn down (if this trainer joined it),
        cuDNN's autotuning flag and the random generators restored. Safe to call twice."""
        if getattr(self, "bar", None) is not None:
            self.bar.close()
        if getattr(self, "lock", None) is not None:
            self.lock.release()
        if self._owns_group:
            distributed.teardown()
        torch.backends.cudnn.benchmark = self._saved_cudnn
        set_rng_state(self._saved_rng)

    def _build_model(self) -> None:
        t, device, class_map = self.config.train, self.device, self.recipe.class_map
        self.model, self.model_kwargs = make_model(self.config, self.recipe.channels, class_map.num_outputs)
        loaded = load_initial_weights(self.model, Path(t.load), self.model_kwargs, self.log) if t.load else None
        self.normalization = input_normalization(self.config, self.model, self.recipe.channels, loaded)
        self.encoder_policy = EncoderPolicy(self.model, t, self.config.model.name)
        if t.sync_bn and self.dist.enabled:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.amp_dtype = resolve_precision(t.precision, t.amp, device)
        self.channels_last = (default_channels_last(device, self.amp_dtype) if t.channels_last is None
                              else t.channels_last)
        self.model.to(device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop shapes: pick the fastest kernels once
        self.encoder_policy.start_epoch(0)  # a frozen encoder is left out of DDP's gradient reduction
        # the autocast is read when a compilation runs: it is set with the optimisation below
        self.warmup = CompileWarmup(self.model, device, lambda: self.autocast(), self.log) if self.compiles else None
        self._wrap_model()

    def _wrap_model(self) -> None:
        """DDP (under torchrun) and torch.compile around the model; again when the trainable parameters change."""
        self.ddp_model = self.model
        if self.dist.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.compiles:
            self.ddp_model = torch.compile(self.ddp_model)
            self.warmup.reset()  # compiled on the first batch, again after a change

    def _build_optimisation(self) -> None:
        (self.loss_fn, self.optimizer, self.monitor, self.schedule, self.autocast, self.scaler,
         self.ema) = make_optimisation(self.config, self.recipe, self.model, self.encoder_policy, self.amp_dtype,
                                       self.device, self.log)

    def _build_data(self) -> None:
        t, config = self.config.train, self.config
        self.augmenter = BatchAugmenter(t.augment_config, seed=t.seed * 1000 + self.dist.rank)
        # crop: the augmenter's output size, None where the loader's dataset already crops
        self.train_batches, self.crop = make_train_batches(self.recipe, self.device, self.dist, self.log,
                                                           self.normalization, full_batches=self.compiles)
        self.val_images = held_out_images(self.recipe, t.val_images, config.data.scale, self.normalization, self.log)
        self.accumulate = max(1, t.accumulate)
        self.clock = TrainingClock(self.device)
        self.losses = DeviceLossTally(self.device)
        self.stopped_by = "epochs"

    def _open_run_folder(self, resume_from: Path | None) -> None:
        run_dir = resume_from or default_run_dir(self.config)
        self.run_dir = Path(distributed.broadcast_object(str(run_dir)))
        self.lock = RunFolderLock.for_job(self.run_dir, self.dist.is_main)
        self.runlog = RunLog(self.run_dir, self.dist.is_main, self.eval_unit, self.log)
        self.checkpoints = CheckpointSchedule(self.run_dir, self.config.train.checkpoint_interval, self.dist.is_main)
        self.checkpoints.saved = lambda path: self._hook("on_checkpoint", path, agree=False)
        if resume_from is None and (self.run_dir / "last.pt").exists():
            if not restarted_by_torchrun():
                raise SeglabError(f"run folder '{self.run_dir}' already holds a run: pass --resume "
                                  f"{self.run_dir} to continue it, or choose another --out")
            resume_from = self.run_dir  # torchrun restarted this worker: pick up where the job stopped
        self._continue_from(train_state.restore(self, Path(resume_from)) if resume_from is not None else TrainState())
        if resume_from is not None:
            where = f"epoch {self.start_epoch + 1}" + (f", batch {self.skip_batches}" if self.skip_batches else "")
            self.log(f"resuming {self.run_dir} at {where} (step {self.step})")

    def _continue_from(self, state: TrainState) -> None:
        """Stand where `state` says (a new run: at the start)."""
        self.start_epoch, self.skip_batches, self.step = state.epoch, state.batch, state.step
        self.clock.elapsed, self.tally, self.history_rows = state.elapsed, state.tally, state.rows
        self.monitor.best, self.monitor.evals_since_best = state.best, state.evals_since_best

    @property
    def compile_seconds(self) -> float:
        """Seconds torch.compile took (not training time)."""
        return self.warmup.seconds if self.warmup is not None else 0.0

    @property
    def scored_model(self) -> torch.nn.Module:
        """The weights validation scores and checkpoints keep: the average with --ema."""
        return self.ema.model if self.ema is not None else self.model

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> History:
        """Train to the end of the schedule (or the time budget, or early stopping). A run killed on
        the way resumes from its last.pt to the bit-identical result on the CPU (`runs.resume`)."""
        c = self.config
        self.runlog.start(self.recipe, self.history_rows)
        setup = [describe_precision(self.amp_dtype, self.device), f"{'channels-last' if self.channels_last else 'NCHW'}"
                 f" layout", *(["torch.compile"] if self.compiles else []),
                 f"global batch {c.train.batch_size * self.dist.world_size * c.train.accumulate}"]
        self.runlog.log_start(self.recipe, self.model, self.device, setup)
        self.callbacks.bind(TrainingRun(self.run_dir, self.recipe, self.history_rows, self.dist.rank))
        stopped_at_start = self._hook("on_train_start", epoch=self.start_epoch)
        for epoch in range(self.start_epoch, self.start_epoch if stopped_at_start else c.train.epochs):
            try:
                stop = self._train_epoch(epoch)
            except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
                if not is_out_of_memory(error):
                    raise
                raise out_of_memory(self.device, c.train.batch_size, self.crop,
                                    self.checkpoints.resume_hint()) from None
            out_of_time = bool(c.train.time_budget and self.clock.elapsed >= c.train.time_budget)
            last_epoch = epoch + 1 == c.train.epochs or out_of_time
            by_epoch = self.eval_unit == "epoch"
            if not stop and (by_epoch or (last_epoch and self.tally.images)):
                validate = not by_epoch or (epoch + 1) % self.eval_count == 0 or last_epoch
                stop = self._close_period(epoch, validate, {"epoch": epoch + 1, "batch": 0})
            stop = self._hook("on_epoch_end", epoch=epoch + 1) or stop
            if stop or out_of_time:
                self.stopped_by = "early_stop" if stop else "time_budget"
            if last_epoch or stop:
                break
        # The loop ends right after a period closed, so the weights are still that period's.
        self.checkpoints.flush()
        stop_reason = None
        if self.callbacks.stopping or self.callbacks.failure is not None:  # (or failed as the last files were written)
            self.stopped_by, stop_reason = self.callbacks.stopped_by
        self.runlog.finish(self.history_rows, self.stopped_by, self.compile_seconds, stop_reason)
        distributed.barrier()
        self.callbacks.run.stopped_by = self.stopped_by
        self.callbacks.raise_failure(f"the run stopped at step {self.step} with its checkpoints and summary.json "
                                     f"written; {self.checkpoints.resume_hint()}")
        best = self.monitor.best
        best_epoch = next((r["epoch"] for r in self.history_rows if r.get(c.train.monitor) == best), None)
        return History(self.run_dir, self.history_rows, best, best_epoch, self.stopped_by, self.dist.is_main, c,
                       stop_reason)

    def _train_epoch(self, epoch: int) -> bool:
        """One pass over the training batches. Returns True when early stopping (judged at a
        step-based evaluation) ends the run."""
        self.train_batches.set_epoch(epoch)
        if self.encoder_policy.start_epoch(epoch):
            self._wrap_model()  # the encoder unfroze: DDP must reduce its gradients too
        self.model.train()
        skip, self.skip_batches = self.skip_batches, 0
        batches = len(self.train_batches)
        self.bar.start_epoch(epoch, batches, skip, self.clock.elapsed)
        stop = out_of_time = False
        self.clock.start()
        for index, (images, masks, weights, centres) in enumerate(self.train_batches):
            if index < skip:
                continue  # trained before the interruption; the order is a function of (seed, epoch)
            boundary = (index + 1) % self.accumulate == 0 or index + 1 == batches
            self._forward_backward(images, masks, weights, boundary, centres)
            if boundary:
                stop, out_of_time = self._after_update(epoch, index, batches)
            if self.step % LOG_EVERY == 0:
                self._show_progress(self.clock.running())
            self.bar.advance(self.clock.total())
            if stop or out_of_time:
                break  # fit() sees the early stop, or the spent budget, and finishes the run
        self._stop_clock()
        self._read_losses()
        self._show_progress(0.0)  # the epoch's final numbers, after the last read
        self.bar.end_epoch()
        return stop

    def _forward_backward(self, images: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor | None,
                          boundary: bool, centres: torch.Tensor | None = None) -> None:
        """Augment one batch (crops centred at `centres` (B, 2), NaN: at random), and add its
        gradients (all-reduced only at an accumulation boundary)."""
        images, masks, weights = self.augmenter(images, masks, weights, out_size=self.crop, centres=centres)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.compiles and self.warmup.due(images):
            with self._clock_paused():
                self.warmup.run(self.ddp_model, self._training_loss, images, masks, weights)
        sync = self.ddp_model.no_sync if (self.dist.enabled and not boundary) else nullcontext
        with sync():
            with self.autocast():
                loss = self._training_loss(self.ddp_model(images), masks, weights)
            self.scaler.scale(loss / self.accumulate).backward()
        self.losses.add(loss.detach())  # stays on the device until a log or checkpoint point
        self.tally.images += images.shape[0] * self.dist.world_size

    def _after_update(self, epoch: int, index: int, batches: int) -> tuple[bool, bool]:
        """The optimizer step at an accumulation boundary, then what falls due at this step: the
        schedule, a loss read, a step-based evaluation or a --save-every checkpoint. Returns
        (early stop, out of time)."""
        t = self.config.train
        # The scaler skips the update when any gradient is not finite (inside the fused optimizer
        # kernel on the device, so no host synchronisation).
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        now = self.clock.total()
        total_steps = t.epochs * math.ceil(batches / self.accumulate)
        self.schedule.step_progress(max(self.step / max(total_steps, 1), now / t.time_budget if t.time_budget else 0.0))
        if self.step % LOG_EVERY == 0:
            self._read_losses()
        at_end = index + 1 == batches
        position = {"epoch": epoch + 1, "batch": 0} if at_end else {"epoch": epoch, "batch": index + 1}
        stop = False
        if self.eval_unit == "step" and self.step % self.eval_count == 0:
            with self._clock_paused():
                stop = self._close_period(epoch, True, position)
                self.model.train()
        elif t.save_every and self.step % t.save_every == 0 and not at_end:
            with self._clock_paused():
                self._read_losses()
                self._check_weights_finite()
                if self.dist.is_main:
                    self.checkpoints.write_last(train_state.last_payload(self, epoch, {}, {**position,
                                                                                          "tally": vars(self.tally)}))
        # Under DDP the ranks agree to stop together (a tiny all-reduce every LOG_EVERY steps).
        out_of_time = bool(t.time_budget) and (not self.dist.enabled or self.step % LOG_EVERY == 0) and \
            distributed.any_rank(now >= t.time_budget, self.device)
        return stop, out_of_time

    def _show_progress(self, running_seconds: float) -> None:
        if self.progress:
            seconds = self.tally.seconds + running_seconds
            self.bar.show(self.tally.loss_sum / max(self.tally.steps, 1), self.tally.images / max(seconds, 1e-9))

    # ---- training time: validation and checkpoint writing do not count --------------------------
    def _stop_clock(self) -> None:
        self.tally.seconds += self.clock.stop()

    @contextmanager
    def _clock_paused(self):
        """Validation and checkpoint writing inside an epoch do not count as training time."""
        self._stop_clock()
        try:
            yield
        finally:
            self.clock.start()

    def _read_losses(self) -> None:
        read_losses(self.losses, self.tally, self.step, self.config.train.max_bad_steps,
                    self.checkpoints.resume_hint(), self.log)

    def _check_weights_finite(self) -> None:
        check_weights_finite([self.model, self.scored_model], self.step,
                             self.checkpoints.resume_hint(" with a lower --learning-rate"))

    def _training_loss(self, output, masks: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Loss of the main output, plus half the auxiliary head's loss when the model has one."""
        if isinstance(output, dict):
            return self.loss_fn(output["out"], masks, weights) + 0.5 * self.loss_fn(output["aux"], masks, weights)
        return self.loss_fn(output, masks, weights)

    def _validate(self) -> Validation:
        draw = self.runlog.overlays_due()
        result = validate(self.scored_model, self.val_images, self.loss_fn, self.recipe.class_map, self.device,
                          self.config.train.threshold, self.dist.rank, self.dist.world_size, self.autocast(),
                          num_overlays=2 if draw else 0)
        if draw:
            self.runlog.add_overlays(result.overlays, self.step)
        return result

    def _close_period(self, epoch: int, validate: bool, position: dict) -> bool:
        """The metrics row of the training since the last one (validated if `validate` and there is
        a validation set); then the schedule, best/last checkpoints and logs. `position` is where a
        resumed run starts: {"epoch": e, "batch": b}, 0-based. Returns True when early stopping ends
        the run."""
        c = self.config
        self._read_losses()
        self._check_weights_finite()
        totals = distributed.all_reduce_sum(torch.tensor([self.tally.loss_sum, self.tally.steps],
                                                         dtype=torch.float64, device=self.device))
        row = {"epoch": epoch + 1, "step": self.step, "time": round(self.clock.elapsed, 2),
               "train_loss": totals[0].item() / max(totals[1].item(), 1),
               "lr": self.optimizer.param_groups[0]["lr"],
               "images_per_s": self.tally.images / max(self.tally.seconds, 1e-9)}
        validation = self._validate() if validate and self.val_images is not None else None
        if validation is not None:
            row.update(validation.row())
        self.tally = EpochTally()
        monitored = row.get(c.train.monitor)
        if monitored is not None:
            self.schedule.step_metric(monitored)
        improved = self.monitor.judge(monitored)
        # every rank judged the same pooled scores: all join the gathering of the image rows
        scored_images = validation.image_rows() if improved and validation is not None else None
        self.history_rows.append(row)
        stop = self.monitor.should_stop
        if self.dist.is_main:
            metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))}
            # Until a validation has scored one, the latest weights stand in for the best: best.pt
            # exists from the first metrics row on, whatever --eval-every says.
            if improved or self.val_images is None or self.monitor.best is None:
                self.checkpoints.hold_best(train_state.checkpoint_payload(self, epoch, metrics),  # copies the weights
                                           scored_images)
            resume_at = {**position, "tally": vars(EpochTally())}
            # The row first: a checkpoint never holds a row metrics.jsonl lacks (a full disk stops
            # the run between the two writes; --resume cuts metrics.jsonl back to last.pt's rows).
            self.runlog.add_row(row, shown_epochs(self.recipe), improved, c.train.time_budget)
            self.checkpoints.period_closed(lambda: train_state.last_payload(self, epoch, metrics, resume_at))
            if stop:
                self.log(f"early stop: {c.train.monitor} has not improved in {self.monitor.evals_since_best} "
                         "evaluations")
        distributed.barrier()  # no rank runs ahead of a checkpoint that is still being written
        return self._hook("on_evaluation", row, epoch=row["epoch"]) or stop

    def _hook(self, hook: str, *args, epoch: int | None = None, agree: bool = True) -> bool:
        """The callbacks' `hook` (engine.callbacks); True once one asked to stop or failed."""
        return self.callbacks.call(hook, *args, step=self.step, best=self.monitor.best, model=self.scored_model,
                                   device=self.device, epoch=epoch, agree=agree)
