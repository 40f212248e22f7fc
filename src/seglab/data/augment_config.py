"""What batched augmentation draws: AugmentConfig (probability and strength of each transform) and its presets.

Plain values only, so config checks and the command's flags need no torch; `data.augment.BatchAugmenter`
applies a config to batches on their device.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from seglab.errors import SeglabError

_RANGE_FIELDS = ("scale", "gamma", "blur_sigma")


@dataclass(frozen=True)
class AugmentConfig:
    """Probability (`*_p`, per sample) and strength of each transform; the defaults turn all off.

    Geometry, composed into one sampling grid per sample:
        hflip_p, vflip_p: mirror left-right / top-bottom.
        rot90_p: rotate by 90, 180 or 270 degrees (uniform); 0.75 with both flips at 0.5 makes all
            8 orientations equally likely.
        affine_p: rotation ~ U(-rotate_degrees, rotate_degrees), zoom ~ log-uniform in `scale`
            (> 1 zooms in), shear ~ U(-shear_degrees, shear_degrees), shift ~ U(-translate,
            translate) * size.
        elastic_p: the U-Net paper's deformation: displacement vectors on a coarse
            `elastic_grid` x `elastic_grid` grid, each ~ N(0, elastic_sigma) pixels, interpolated
            bicubically to every pixel.
    Intensity, on images only, after geometry. Strengths are in units of each sample's range
    (max - min), so they mean the same for [0, 1] images and for standardised ones:
        gamma (log-uniform range), contrast (factor ~ U(1 - c, 1 + c) about the mean),
        brightness (shift ~ U(-b, b)), blur_sigma (Gaussian blur, sigma in px ~ U(range)),
        noise_std (additive Gaussian noise).
    """

    hflip_p: float = 0.0
    vflip_p: float = 0.0
    rot90_p: float = 0.0
    affine_p: float = 0.0
    rotate_degrees: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    shear_degrees: float = 0.0
    translate: float = 0.0
    elastic_p: float = 0.0
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    gamma_p: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)
    contrast_p: float = 0.0
    contrast: float = 0.0
    brightness_p: float = 0.0
    brightness: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    noise_p: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            if f.name.endswith("_p") and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise SeglabError(f"augment {f.name}={getattr(self, f.name)} is not a probability: use 0..1")
        for name in _RANGE_FIELDS:
            low, high = getattr(self, name)
            if not 0.0 <= low <= high or (name != "blur_sigma" and low == 0.0):
                raise SeglabError(f"augment {name}={[low, high]} must be [low, high] with 0 < low <= high")
        for name in ("rotate_degrees", "translate", "elastic_sigma", "brightness", "noise_std"):
            if getattr(self, name) < 0:
                raise SeglabError(f"augment {name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.shear_degrees < 90.0:
            raise SeglabError(f"augment shear_degrees={self.shear_degrees} must be in [0, 90)")
        if not 0.0 <= self.contrast < 1.0:
            raise SeglabError(f"augment contrast={self.contrast} must be in [0, 1)")
        if self.elastic_grid < 2:
            raise SeglabError(f"augment elastic_grid={self.elastic_grid} must be >= 2 (3 in the U-Net paper)")

    @property
    def geometric(self) -> bool:
        """True when some transform moves pixels (so the batch is resampled)."""
        return max(self.hflip_p, self.vflip_p, self.rot90_p, self.affine_p, self.elastic_p) > 0

    @property
    def photometric(self) -> bool:
        """True when some transform changes image values."""
        return max(self.gamma_p, self.contrast_p, self.brightness_p, self.blur_p, self.noise_p) > 0

    def to_dict(self) -> dict:
        """Plain dict (ranges as lists) for YAML / checkpoints; inverse of `augment_config_from_dict`."""
        return {key: list(val) if isinstance(val, tuple) else val for key, val in asdict(self).items()}


_LIGHT = AugmentConfig(hflip_p=0.5, vflip_p=0.5, rot90_p=0.75)
_PAPER = replace(_LIGHT, elastic_p=1.0, elastic_grid=3, elastic_sigma=10.0,
                 gamma_p=0.5, gamma=(0.9, 1.1), contrast_p=0.5, contrast=0.1,
                 brightness_p=0.5, brightness=0.05)
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "light": _LIGHT,
    "paper": _PAPER,
    # Photos have an up: no vertical flips or quarter turns; mild zoom and rotation, colour changes.
    "photo": AugmentConfig(hflip_p=0.5, affine_p=0.5, rotate_degrees=5.0, scale=(0.8, 1.25), translate=0.05,
                           gamma_p=0.3, gamma=(0.8, 1.25), contrast_p=0.5, contrast=0.2, brightness_p=0.5,
                           brightness=0.1),
    "strong": replace(_PAPER, affine_p=0.5, rotate_degrees=15.0, scale=(0.85, 1.2), shear_degrees=5.0,
                      translate=0.05, gamma_p=0.5, gamma=(0.7, 1.4), contrast_p=0.8, contrast=0.25,
                      brightness_p=0.8, brightness=0.15, blur_p=0.2, blur_sigma=(0.5, 1.5),
                      noise_p=0.3, noise_std=0.03),
}


def augment_preset(name: str, **overrides) -> AugmentConfig:
    """The preset `name` (none | light | paper | strong) with some fields replaced."""
    return augment_config_from_dict({"preset": name, **overrides})


def augment_config_from_dict(data: dict) -> AugmentConfig:
    """AugmentConfig from a dict such as `to_dict()` gives; an optional "preset" key is the base."""
    data = dict(data)
    base = AUGMENT_PRESETS["none"]
    if "preset" in data:
        preset = data.pop("preset")
        if not isinstance(preset, str) or preset not in AUGMENT_PRESETS:
            names = ", ".join(AUGMENT_PRESETS)
            raise SeglabError(f"unknown augmentation preset {preset!r}: use one of {names}")
        base = AUGMENT_PRESETS[preset]
    known = {f.name: f for f in fields(AugmentConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise SeglabError(f"unknown augmentation setting(s) {', '.join(unknown)}: use {', '.join(known)}")
    values = {}
    for key, value in data.items():
        expected = "[low, high], e.g. [0.9, 1.1]" if key in _RANGE_FIELDS else "a number"
        try:
            if key in _RANGE_FIELDS:
                low, high = value
                values[key] = (float(low), float(high))
            else:
                values[key] = int(value) if key == "elastic_grid" else float(value)
        except (TypeError, ValueError):
            raise SeglabError(f"augment {key}={value!r} is not valid: give {expected}") from None
    return replace(base, **values)
