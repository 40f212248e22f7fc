"""The exported graph: a model wrapped with normalisation, mirror padding and its activation, built
from index arithmetic that stays dynamic (batch, height, width) when traced for ONNX/TorchScript."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from seglab.data.normalization import Normalization, check_normalization
from seglab.data.preprocess import normalization_statistics
from seglab.errors import ConfigError, SeglabError
from seglab.models.outputs import input_multiple, logits_to_probabilities, min_input_size


# ---- index arithmetic that stays dynamic when traced ---------------------------------------------
# Under tracing, sizes must flow through tensor ops (never Python `if`/`min`/`range`) to stay
# symbolic in the graph, and index vectors must be built from the input tensor (not torch.arange
# with a device) so that a TorchScript export traced on the CPU also runs on a GPU.
def _size(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x.shape[dim] as a 0-dim int64 tensor, symbolic under tracing."""
    return torch._shape_as_tensor(x)[dim]


def _positions(index: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """(before + n + after,) int64 positions -before .. n + after - 1, on index's device."""
    ones = F.pad(torch.ones_like(index), (before, after), value=1)
    return ones.cumsum(0) - 1 - before


def _reflect_once(index: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """index (n,) -> (before + n + after,) mirrored at both ends without repeating the edge, as
    F.pad(mode="reflect") does; requires before, after < n (clamped for safety)."""
    n = _size(index, 0)
    positions = _positions(index, before, after).abs()
    positions = torch.where(positions > n - 1, 2 * (n - 1) - positions, positions)
    return index.index_select(0, positions.clamp(min=0).minimum(n - 1))


def _replicate(index: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """index (n,) -> (before + n + after,) with the edge entries repeated (F.pad "replicate")."""
    n = _size(index, 0)
    return index.index_select(0, _positions(index, before, after).clamp(min=0).minimum(n - 1))


def reflect_pad_index(like: torch.Tensor, before: torch.Tensor, after: torch.Tensor, steps: int) -> torch.Tensor:
    """Source rows of `seglab.padding.mirror_pad` along one axis, the length of `like` (n,): reflect
    by at most length - 1 per step, `steps` times (unrolled), then replicate what is left (1-pixel
    sides)."""
    index = torch.ones_like(like, dtype=torch.long).cumsum(0) - 1  # (n,) = 0 .. n - 1
    for _ in range(steps):
        length = _size(index, 0)
        step_before, step_after = before.minimum(length - 1), after.minimum(length - 1)
        index = _reflect_once(index, step_before, step_after)
        before, after = before - step_before, after - step_after
    return _replicate(index, before, after)


def graph_normalize(pixels: torch.Tensor, input_max: float, mode: Normalization,
                    stats: torch.Tensor | None = None) -> torch.Tensor:
    """Raw pixels (B, C, H, W) -> float32 normalised as `preprocess.normalize` does.

    The statistics are computed in float64: ONNX Runtime sums a ReduceMean in order, which in
    float32 drifts by ~4e-5 over a 512x512 image (PyTorch sums pairwise) and alone broke the 1e-4
    parity. `stats` (B or 1, C, 2), when given, holds (shift, divide) in units of pixels / input_max
    (`preprocess.normalization_statistics` of a whole image) to use instead of this input's own;
    NaN entries fall back to the input's own. Tiles of a large image pass the image's statistics,
    so that they are normalised as the whole image is.
    """
    x = pixels.double() / input_max
    if mode == "none":
        return x.float()
    shift, divide = normalization_statistics(x, mode)  # (B, C, 1, 1)
    if stats is not None:
        given = stats.double()[..., None, None]  # (B or 1, C, 2, 1, 1)
        shift = torch.where(torch.isnan(given[:, :, 0]), shift, given[:, :, 0])
        divide = torch.where(torch.isnan(given[:, :, 1]), divide, given[:, :, 1])
    return ((x - shift) / divide).float()


def image_stats(pixels: torch.Tensor, normalization: Normalization, input_max: float) -> torch.Tensor | None:
    """Raw pixels (B, C, H, W) -> the exported graph's `stats` input (B, C, 2) float32 for them
    (None for "none" normalisation, which has no statistics)."""
    if normalization == "none":
        return None
    shift, divide = normalization_statistics(pixels.double() / input_max, normalization)  # (B, C, 1, 1)
    return torch.stack([shift[..., 0, 0], divide[..., 0, 0]], -1).float()


def _gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W) -> (B, C, len(rows), len(cols))."""
    return x.index_select(2, rows).index_select(3, cols)


def _valid_progression(model: nn.Module) -> tuple[int, int]:
    """(smallest valid input, spacing) of a valid-padding model whose input side for an output of
    at least h is the first term of that arithmetic progression >= h + 2 * margin."""
    margin, valid_input = model.margin, model.valid_input_size
    first = valid_input(1)
    stride = valid_input(first - 2 * margin + 1) - first
    for height in range(1, first + 8 * max(stride, 1)):
        target = max(height + 2 * margin, first)
        if stride < 1 or valid_input(height) != first + stride * -(-(target - first) // stride):
            raise SeglabError(f"cannot export {type(model).__name__}: its valid input sizes are not evenly "
                              "spaced, so the graph cannot compute its mirror padding; use padding='same'")
    return first, stride


def reflect_steps(max_pad: int) -> int:
    """Steps of repeated reflection enough for pads up to max_pad on any side of length >= 2 (each step
    at least doubles the length minus one, so the capacity after k steps is >= 2**k - 1)."""
    return max(1, math.ceil(math.log2(max_pad + 1)) + 1)


class ExportWrapper(nn.Module):
    """Raw pixels (B, C, H, W) float32 -> probabilities (B, K, H, W): the model with the Predictor's
    intensity scaling, normalisation, padding and activation around it, in traceable tensor ops.

    Args:
        model: the network, in eval mode. A model that takes only sides that are multiples of
            `model.input_multiple`, at least `model.min_input_size` long (seglab's padded U-Net,
            SMP models), is given its input mirrored up to such a size here, in traced ops.
        normalization: a mode of `normalization.NORMALIZATIONS` or fixed {"mean", "std"}, as stored in
            the checkpoint.
        input_max: the pixels are divided by it first (255 for 8-bit files).
        multilabel: the outputs are overlapping labels, a sigmoid each.
    """

    def __init__(self, model: nn.Module, normalization: Normalization = "per_image", input_max: float = 255.0,
                 multilabel: bool = False):
        super().__init__()
        self.multilabel = multilabel
        try:
            normalization = check_normalization(normalization)
        except ConfigError as error:
            raise SeglabError(f"the checkpoint's normalisation cannot be exported: {error}") from None
        if not input_max > 0:
            raise SeglabError(f"input_max must be positive, got {input_max}")
        self.model = model.eval()
        self.normalization = normalization
        self.input_max = float(input_max)
        self.margin = int(getattr(model, "margin", 0))
        self.multiple = 1 if self.margin else input_multiple(model)
        self.minimum = 1 if self.margin else min_input_size(model)
        self.multiple_steps = reflect_steps(max(self.multiple, self.minimum))
        if self.margin:
            self.valid_first, self.valid_stride = _valid_progression(model)
            max_pad = max(self.margin, self.valid_first + self.valid_stride)
            self.pad_steps = reflect_steps(max_pad)

    def forward(self, pixels: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """Raw pixels (B, C, H, W) [and whole-image statistics (B or 1, C, 2), see `graph_normalize`]
        -> probabilities (B, K, H, W)."""
        x = graph_normalize(pixels, self.input_max, self.normalization, stats)  # (B, C, H, W)
        return logits_to_probabilities(self.logits(x).float(), self.multilabel)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised x (B, C, H, W) -> logits (B, K, H, W); `full_size_logits` in traceable ops."""
        height, width = _size(x, 2), _size(x, 3)
        if self.margin:
            rows = self._valid_index(height, x[0, 0, :, 0])
            cols = self._valid_index(width, x[0, 0, 0, :])
        elif self.multiple > 1 or self.minimum > 1:
            # The model pads by itself only when needed (Python arithmetic, frozen by tracing): pad
            # here exactly as it would, so the size it sees always fits and its own padding is moot.
            rows = self._far_side_index(height, x[0, 0, :, 0])
            cols = self._far_side_index(width, x[0, 0, 0, :])
        else:
            return self.model(x)
        logits = self.model(_gather(x, rows, cols))  # (B, K, >= H, >= W)
        return logits[:, :, :height, :width]

    def _far_side_index(self, size: torch.Tensor, line: torch.Tensor) -> torch.Tensor:
        """Source rows of the model's own padding along one axis (`seglab.padding.pad_to_multiple`):
        mirrored after the end up to `padded_size(size, multiple, minimum)`."""
        multiple = self.multiple
        target = torch.div(size + multiple - 1, multiple, rounding_mode="floor") * multiple
        target = target.clamp(min=-(-self.minimum // multiple) * multiple)
        return reflect_pad_index(line, torch.zeros_like(size), target - size, self.multiple_steps)

    def _valid_index(self, size: torch.Tensor, line: torch.Tensor) -> torch.Tensor:
        """Source rows of the valid-padding input for one axis: `margin` mirrored before, and after
        the image up to the smallest valid input side whose output covers it."""
        first, stride = self.valid_first, self.valid_stride
        target = (size + 2 * self.margin).clamp(min=first)
        in_size = first + torch.div(target - first + stride - 1, stride, rounding_mode="floor") * stride
        before = torch.zeros_like(size) + self.margin
        return reflect_pad_index(line, before, in_size - size - self.margin, self.pad_steps)


# ---- metadata -----------------------------------------------------------------------------------
