"""Test-time augmentation: average probabilities over flips or all eight dihedral transforms.

The U-Net paper averaged predictions over rotated and flipped inputs. Each transform is undone
on the output before averaging, so the result is aligned with the input. `tta_forward` wraps a
forward function and composes with tiling: pass it to `predict_tiled` as the forward.
"""
from __future__ import annotations

from typing import Callable

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]

# The transforms of each mode of `inference.options.TTA_MODES`.
# A transform is (quarter turns k, mirror): x -> rot90(flip_w(x) if mirror else x, k).
TRANSFORMS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    # identity, left-right, up-down (= half turn of the left-right mirror), both (= half turn)
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((k, mirror) for mirror in (False, True) for k in range(4)),
}


def apply_transform(x: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """Dihedral transform of x (..., H, W): optional left-right flip, then k quarter turns
    counter-clockwise. Odd k gives (..., W, H)."""
    if mirror:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def invert_transform(y: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """Undo `apply_transform(., k, mirror)` on y (..., h, w)."""
    y = torch.rot90(y, -k, dims=(-2, -1))
    return y.flip(-1) if mirror else y


def tta_forward(forward: Forward, mode: str = "flips") -> Forward:
    """Wrap `forward` ((B, C, H, W) -> probabilities (B, K, H', W')) into its TTA average.

    mode: "none" returns `forward` itself; "flips" averages 4 passes (identity, horizontal,
    vertical, both); "d4" averages all 8 rotations and reflections. Under "d4" a non-square input
    is also fed transposed, as (B, C, W, H), so the model must accept that size (a same-padding
    U-Net does; a valid-padding one needs both sides valid). Averages probabilities, not logits.
    Runs the passes one after another, so memory stays at one pass.
    """
    if mode not in TRANSFORMS:
        raise ValueError(f"TTA mode must be one of {sorted(TRANSFORMS)}, not {mode!r}")
    if mode == "none":
        return forward
    transforms = TRANSFORMS[mode]

    def averaged(x: torch.Tensor) -> torch.Tensor:
        total = None
        for k, mirror in transforms:
            probs = invert_transform(forward(apply_transform(x, k, mirror)), k, mirror).float()
            total = probs if total is None else total + probs
        return total / len(transforms)

    return averaged
