"""Batched augmentation on the batch's device: flips, rot90, affine, elastic and crop in ONE resample.

What to draw (AugmentConfig, the presets) is declared in `seglab.data.augment_config`, which needs no torch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seglab.data.augment_config import AugmentConfig
from seglab.data.classmap import IGNORE_INDEX
from seglab.data.io import MIN_IMAGE_SIDE
from seglab.errors import SeglabError


class BatchAugmenter:
    """Augments whole batches on their own device with one `grid_sample` per tensor.

    Every geometric transform of a sample (flip, rot90, affine, elastic, crop window) is folded
    into one sampling grid, so thin structures such as membranes are interpolated only once.
    All randomness comes from this augmenter's generator, created on the first batch's device
    and seeded with `seed`: the same seed gives the same stream on the same device, and
    `state_dict()` / `load_state_dict()` resume it exactly.
    """

    def __init__(self, config: AugmentConfig, seed: int, ignore_index: int = IGNORE_INDEX):
        self.config = config
        self.seed = int(seed)
        self.ignore_index = int(ignore_index)
        self._generator: torch.Generator | None = None
        self._pending_state: tuple[str, torch.Tensor] | None = None

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor | None = None,
                 out_size: tuple[int, int] | None = None, centres: torch.Tensor | None = None):
        """images (N, C, H, W) float; masks (N, H, W) int64; weights (N, H, W) float or None;
        centres (N, 2) float (row, col) input pixels or None.

        Returns (images (N, C, h, w), masks (N, h, w) int64, weights (N, h, w) or None) with
        (h, w) = out_size or (H, W). A smaller out_size is a random window inside the (rotated)
        image; a larger one is centred. A sample with a centre (not NaN) has its window centred on
        that input pixel after the geometric transforms, moved inside the canvas (--oversample),
        with the same draws as without. Mask pixels sampled from outside the image become
        `ignore_index` and get weight 0; images are reflected there. With nothing to do the
        inputs come back as they are.
        """
        _check_batch(images, masks, weights)
        height, width = images.shape[-2:]
        out_h, out_w = (height, width) if out_size is None else (int(out_size[0]), int(out_size[1]))
        if not self.config.geometric and not self.config.photometric and (out_h, out_w) == (height, width):
            return images, masks, weights
        generator = self._rng(images.device)
        if self.config.geometric or (out_h, out_w) != (height, width):
            grid, valid = self._sampling_grid(images.shape[0], height, width, out_h, out_w, generator, centres)
            images = F.grid_sample(images, grid.to(images.dtype), mode="bilinear",
                                   padding_mode="reflection", align_corners=True)
            # Nearest never blends classes; "border" only keeps the kernel in range, validity decides.
            masks = F.grid_sample(masks[:, None].float(), grid, mode="nearest",
                                  padding_mode="border", align_corners=True)[:, 0].round().long()
            masks = masks.masked_fill(~valid, self.ignore_index)
            if weights is not None:
                weights = F.grid_sample(weights[:, None].to(grid.dtype), grid, mode="bilinear",
                                        padding_mode="border", align_corners=True)[:, 0] * valid
        if self.config.photometric:
            images = self._photometric(images, generator)
        return images, masks, weights

    def _sampling_grid(self, n: int, height: int, width: int, out_h: int, out_w: int,
                       generator: torch.Generator, centres: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid (N, out_h, out_w, 2) for grid_sample(align_corners=True) and valid (N, out_h, out_w) bool.

        Works in pixel coordinates: an output pixel sits in a window of the "canvas" (the image
        after rot90); canvas-centred coordinates go through one 2x2 matrix (affine, then rot90,
        then flips) plus a shift to input-centred ones; the elastic field is added in the input
        frame. Flip and rot90 matrices hold only 0 and +-1 and the offsets are whole pixels, so
        without affine/elastic every output pixel centre lands on an input pixel centre (up to
        float rounding of the normalised grid, a few 1e-6 px). The random draws happen in a fixed
        order (affine, rot90, flips, window, elastic), so a seed gives one stream.
        """
        device = self._generator.device
        rand = lambda: torch.rand(n, generator=generator, device=device)  # noqa: E731
        matrix, shift = self._affine(n, height, width, rand, generator)
        quarter_turns, matrix = self._turns_and_flips(n, height, width, out_h, out_w, rand, matrix)
        sideways = quarter_turns % 2 == 1
        canvas = torch.stack([torch.where(sideways, height, width), torch.where(sideways, width, height)], -1)
        corner = torch.stack([_window_starts(canvas[:, 0], out_w, rand),
                              _window_starts(canvas[:, 1], out_h, rand)], -1)  # (N, 2) window's top-left
        if centres is not None:
            corner = _centred_corner(corner, centres.to(device), matrix, shift, canvas, (width, height), (out_w, out_h))
        # Output pixel p -> input pixel matrix @ (p + corner - canvas centre) + shift + input centre,
        # then normalised: one (N, 2, 3) affine map applied to all pixels with one matmul.
        to_unit = _xy(2.0 / (width - 1), 2.0 / (height - 1), device)  # px -> grid units
        centre_in = _xy((width - 1) / 2, (height - 1) / 2, device)
        offset = (matrix @ (corner - (canvas - 1) / 2)[..., None])[..., 0] + shift + centre_in  # (N, 2) px
        theta = torch.cat([to_unit[:, None] * matrix, (to_unit * offset - 1)[..., None]], -1)  # (N, 2, 3)
        rows, cols = torch.meshgrid(torch.arange(out_h, device=device, dtype=torch.float32),
                                    torch.arange(out_w, device=device, dtype=torch.float32), indexing="ij")
        pixels = torch.stack([cols, rows, torch.ones_like(cols)], -1).reshape(-1, 3)  # (h*w, 3) as (x, y, 1)
        grid = self._elastic((pixels @ theta.transpose(1, 2)).reshape(n, out_h, out_w, 2), to_unit, rand, generator)
        # Inside means rounding to a pixel of the image: within half a pixel beyond the edge centres.
        valid = (grid.abs() < 1 + to_unit / 2).all(-1)
        return grid, valid

    def _affine(self, n: int, height: int, width: int, rand, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(matrix (N, 2, 2) canvas-centred -> input-centred, shift (N, 2) as (x, y) input pixels)."""
        cfg, device = self.config, self._generator.device
        matrix = torch.eye(2, device=device).repeat(n, 1, 1)
        shift = torch.zeros(n, 2, device=device)
        if cfg.affine_p > 0:
            apply = rand() < cfg.affine_p
            angle = torch.deg2rad((2 * rand() - 1) * cfg.rotate_degrees) * apply
            shear = torch.tan(torch.deg2rad((2 * rand() - 1) * cfg.shear_degrees)) * apply
            low, high = math.log(cfg.scale[0]), math.log(cfg.scale[1])
            zoom = torch.where(apply, torch.exp(low + (high - low) * rand()), 1.0)
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            # rotation @ [[1, shear], [0, 1]] / zoom: zoom > 1 samples a smaller region (zooms in)
            matrix = torch.stack([torch.stack([cos, cos * shear - sin], -1),
                                  torch.stack([sin, sin * shear + cos], -1)], -2)
            size = _xy(width, height, device)
            shift = (2 * torch.rand(n, 2, generator=generator, device=device) - 1) * cfg.translate * size
            shift = shift * apply[:, None]
        return matrix, shift

    def _turns_and_flips(self, n: int, height: int, width: int, out_h: int, out_w: int, rand,
                         matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(quarter turns (N,) int64, flips @ rot90 @ matrix (N, 2, 2)): exact 0 / +-1 entries."""
        cfg, device = self.config, self._generator.device
        quarter_turns = torch.zeros(n, dtype=torch.long, device=device)
        if cfg.rot90_p > 0:
            sideways_fits = height == width or (out_h <= width and out_w <= height)
            # A non-square batch turned sideways would change shape or leave the window: 180 only.
            turns = 1 + (rand() * 3).long().clamp(max=2) if sideways_fits else quarter_turns + 2
            quarter_turns = torch.where(rand() < cfg.rot90_p, turns, 0)
            # cos/sin of k quarter turns (k = 0..3: 1, 0, -1, 0 and 0, 1, 0, -1), computed exactly.
            cos = torch.where(quarter_turns % 2 == 0, 1 - quarter_turns, 0).float()
            sin = torch.where(quarter_turns % 2 == 1, 2 - quarter_turns, 0).float()
            matrix = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) @ matrix
        flips = torch.ones(n, 2, 1, device=device)  # (N, 2, 1) sign of x and y
        if cfg.hflip_p > 0:
            flips[:, 0, 0] = torch.where(rand() < cfg.hflip_p, -1.0, 1.0)
        if cfg.vflip_p > 0:
            flips[:, 1, 0] = torch.where(rand() < cfg.vflip_p, -1.0, 1.0)
        return quarter_turns, flips * matrix

    def _elastic(self, grid: torch.Tensor, to_unit: torch.Tensor, rand, generator: torch.Generator) -> torch.Tensor:
        """The paper's deformation added to grid (N, h, w, 2): coarse Gaussian displacements, bicubic."""
        cfg, device, n = self.config, self._generator.device, grid.shape[0]
        if not (cfg.elastic_p > 0 and cfg.elastic_sigma > 0):
            return grid
        apply = (rand() < cfg.elastic_p).float()[:, None, None, None]
        coarse = torch.randn(n, 2, cfg.elastic_grid, cfg.elastic_grid, generator=generator, device=device)
        coarse = coarse * (cfg.elastic_sigma * apply * to_unit[:, None, None])  # (N, 2, g, g) grid units
        # The coarse grid spans the input image; bicubic sampling at each output pixel's input
        # position is the paper's bicubic upsampling, evaluated only where it is needed.
        displacement = F.grid_sample(coarse, grid, mode="bicubic", padding_mode="border",
                                     align_corners=True)  # (N, 2, h, w)
        return grid + displacement.permute(0, 2, 3, 1)  # (N, h, w, 2)

    def _photometric(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images (N, C, H, W) float -> same shape, each change applied to a random subset of samples.

        Unselected samples get neutral parameters (factor 1, shift 0), which leave them unchanged.
        """
        cfg, n, device, dtype = self.config, images.shape[0], images.device, images.dtype
        rand = lambda: torch.rand(n, 1, 1, 1, generator=generator, device=device)  # noqa: E731
        low, high = images.reshape(n, -1).aminmax(dim=1)
        low = low[:, None, None, None]
        span = (high[:, None, None, None] - low).clamp_min(1e-6)  # (N, 1, 1, 1)
        if cfg.gamma_p > 0:
            apply = rand() < cfg.gamma_p
            lo, hi = math.log(cfg.gamma[0]), math.log(cfg.gamma[1])
            gamma = torch.exp(lo + (hi - lo) * rand())
            curved = torch.addcmul(low, span, ((images - low) / span).clamp(0, 1) ** gamma)
            images = torch.where(apply, curved, images)
        if cfg.contrast_p > 0 or cfg.brightness_p > 0:
            # Contrast about the mean and brightness fold into one per-sample x * factor + offset.
            factor = 1 + (2 * rand() - 1) * cfg.contrast * (rand() < cfg.contrast_p)
            brightness = (2 * rand() - 1) * cfg.brightness * span * (rand() < cfg.brightness_p)
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = torch.addcmul(mean * (1 - factor) + brightness, images, factor)
        if cfg.blur_p > 0:
            apply = rand() < cfg.blur_p
            sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * rand()
            images = torch.where(apply, _gaussian_blur(images, sigma.flatten(), cfg.blur_sigma[1]), images)
        if cfg.noise_p > 0:
            strength = cfg.noise_std * span * (rand() < cfg.noise_p)
            noise = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
            images = torch.addcmul(images, noise, strength)
        return images.to(dtype)

    def _rng(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
            if self._pending_state is not None:
                saved_device, state = self._pending_state
                if torch.device(saved_device).type != device.type:
                    raise SeglabError(f"the augmentation state was saved on {saved_device} and cannot resume "
                                      f"on {device}: resume on the same kind of device or start a new stream")
                self._generator.set_state(state)
                self._pending_state = None
        elif self._generator.device != device:
            raise SeglabError(f"this augmenter draws on {self._generator.device} but got a batch on "
                              f"{device}: keep batches on one device or make a new BatchAugmenter")
        return self._generator

    def state_dict(self) -> dict:
        """{"seed": int, "device": str ("" before the first batch), "rng_state": uint8 tensor}."""
        if self._generator is None:
            device, state = self._pending_state or ("", torch.empty(0, dtype=torch.uint8))
            return {"seed": self.seed, "device": device, "rng_state": state.clone()}
        return {"seed": self.seed, "device": str(self._generator.device),
                "rng_state": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream saved by `state_dict()`; applied when the next batch arrives."""
        self.seed = int(state["seed"])
        self._generator = None
        saved = state["rng_state"]
        self._pending_state = (str(state["device"]), saved.cpu().clone()) if state["device"] else None


def _xy(x: float, y: float, device: torch.device) -> torch.Tensor:
    """The vector (x, y) (2,) float32 made on the device by fill kernels. torch.tensor([x, y],
    device="cuda") would copy from pageable host memory, which synchronises the stream."""
    return torch.stack([torch.full((), float(x), device=device), torch.full((), float(y), device=device)])


def _centred_corner(corner: torch.Tensor, centres: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor,
                    canvas: torch.Tensor, size: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """Window corners (N, 2) (x, y) in the canvas whose centre pixel maps to centres (N, 2) (row,
    col) of the input; NaN rows keep `corner`. Whole pixels, inside the canvas where it fits.

    An output pixel p samples input matrix @ (p + corner - (canvas - 1) / 2) + shift + (size - 1) / 2;
    solving that for p = (out - 1) / 2 gives the corner, with the 2x2 matrix inverted by hand (no
    host synchronisation, unlike torch.linalg.inv on a GPU).
    """
    device = corner.device
    target = centres.flip(-1)  # (x, y)
    a, b, c, d = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1]
    inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / (a * d - b * c)[:, None, None]
    relative = target - shift - (_xy(*size, device) - 1) / 2
    wanted = (inverse @ relative[..., None])[..., 0] + (canvas - 1) / 2 - (_xy(*out, device) - 1) / 2
    room = canvas - _xy(*out, device)
    inside = torch.where(room >= 0, torch.minimum(torch.clamp(torch.round(wanted), min=0), room), torch.floor(room / 2))
    return torch.where(torch.isnan(target), corner, inside)


def _window_starts(canvas: torch.Tensor, out: int, rand) -> torch.Tensor:
    """Whole-pixel start (N,) of an `out`-long window in each canvas length (N,); centred if too small."""
    room = canvas - out
    start = torch.minimum(torch.floor(rand() * (room + 1)), room)  # drawn even when room is 0: no sync
    return torch.where(room >= 0, start, torch.floor(room / 2))


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """images (N, C, H, W), sigma (N,) px -> (N, C, H, W): separable per-sample kernels, reflected edges."""
    n, channels, height, width = images.shape
    radius = max(1, min(math.ceil(3 * max_sigma), height - 1, width - 1))
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-taps**2 / (2 * sigma.to(images.dtype).clamp_min(1e-3)[:, None] ** 2))  # (N, K)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (N*C, K)
    flat = images.reshape(1, n * channels, height, width)
    groups = n * channels  # one kernel per (sample, channel) plane
    along_rows = kernel[:, None, None, :]  # (N*C, 1, 1, K)
    along_columns = kernel[:, None, :, None]  # (N*C, 1, K, 1)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), along_rows, groups=groups)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), along_columns, groups=groups)
    return flat.reshape(n, channels, height, width)


def _check_batch(images: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor | None) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be (N, C, H, W) float, got {tuple(images.shape)} {images.dtype}")
    if min(images.shape[-2:]) < MIN_IMAGE_SIDE:
        raise ValueError(f"images must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, got {tuple(images.shape)}")
    expected = (images.shape[0], *images.shape[-2:])
    if tuple(masks.shape) != expected or masks.is_floating_point():
        raise ValueError(f"masks must be {expected} integer class indices, "
                         f"got {tuple(masks.shape)} {masks.dtype}")
    if weights is not None and tuple(weights.shape) != expected:
        raise ValueError(f"weights must be {expected}, got {tuple(weights.shape)}")
