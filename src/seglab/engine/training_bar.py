"""The training progress bar: against the time budget when there is one, else one bar per epoch."""
from __future__ import annotations

from seglab.progress import progress_bar

# With a budget the bar counts seconds of training (validation and checkpoints do not count, as for
# the budget itself); its ETA comes from the wall time spent per training second, so it includes them.
BUDGET_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of the budget [ETA {remaining}{postfix}]"


class TrainingBar:
    """Rank 0's progress bar of one run (`enabled` False: every call does nothing).

    budget: the time budget in seconds (None: a bar per epoch, in batches); epochs: shown as
    "epoch e/E" (None where the plan's "as many as the budget allows" would say nothing).
    """

    def __init__(self, enabled: bool, budget: float | None, epochs: int | None):
        self.enabled, self.budget, self.epochs = enabled, budget, epochs
        self._bar = None

    def start_epoch(self, epoch: int, batches: int, skip: int, trained_seconds: float) -> None:
        """Epoch `epoch` (0-based) of `batches` batches starts, `skip` of them trained before a resume."""
        if not self.enabled:
            return
        desc = f"epoch {epoch + 1}" + (f"/{self.epochs}" if self.epochs else "")
        if self.budget is None:
            self._bar = progress_bar(batches, desc, "batch", True, leave=False, initial=skip)
        elif self._bar is None:
            done = min(trained_seconds, self.budget)
            self._bar = progress_bar(self.budget, desc, "s", True, leave=False, initial=done,
                                     bar_format=BUDGET_FORMAT)
        self._bar.set_description_str(desc, refresh=False)

    def advance(self, trained_seconds: float) -> None:
        """One batch trained; `trained_seconds`: all the run's training seconds so far."""
        if self._bar is None:
            return
        if self.budget is None:
            self._bar.update(1)
        else:
            self._bar.update(min(trained_seconds, self.budget) - self._bar.n)

    def show(self, loss: float, images_per_s: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}")

    def end_epoch(self) -> None:
        if self._bar is not None and self.budget is None:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def shown_epochs(recipe) -> int | None:
    """The epochs the bar shows: none where the plan set them to "as many as the budget allows"."""
    chosen = ((recipe.plan or {}).get("choices") or {}).get("train.epochs") or {}
    planned = bool(chosen) and not chosen.get("given")
    return None if planned and recipe.config.train.time_budget else recipe.config.train.epochs
