"""U-Net (Ronneberger et al., 2015) with the paper's unpadded variant and a padded same-size one.

Registered as "unet" with its options (UNetOptions) in `seglab.models.builtin`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from seglab.padding import center_crop, pad_to_multiple


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (BatchNorm and) ReLU. (N, in, H, W) -> (N, out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, padding: int = 1, batch_norm: bool = True):
        layers: list[nn.Module] = []
        for channels_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(channels_in, out_channels, 3, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class HalvingMaxPool(nn.MaxPool2d):
    """nn.MaxPool2d(2), computed without gradients as two element-wise maxima of strided views:
    (N, C, H, W) -> (N, C, H // 2, W // 2), the same values. PyTorch's CPU pooling also writes the
    argmax indices, which inference never needs: the maxima took 0.7 ms where pooling took 1.7 ms
    (bf16, channels-last) or 14 ms (NCHW) on a 16 x 512 x 512 map (2-core EPYC). With gradients
    (their backward is 8x slower), in traced exports and under torch.compile it is nn.MaxPool2d."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling()):
            return super().forward(x)
        height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # floor, as the pooling does
        rows = torch.maximum(x[..., 0:height:2, :width], x[..., 1:height:2, :width])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class Down(nn.Sequential):
    """2x2 max-pool then DoubleConv: halves the size, changes the channels."""

    def __init__(self, in_channels: int, out_channels: int, padding: int = 1, batch_norm: bool = True):
        super().__init__(HalvingMaxPool(), DoubleConv(in_channels, out_channels, padding, batch_norm))


class Up(nn.Module):
    """Up-convolution halving the channels, concatenation with the skip, DoubleConv.

    `mode="transpose"` is the paper's learned 2x2 up-convolution; `mode="bilinear"` upsamples
    bilinearly and halves the channels with a 1x1 convolution (fewer parameters, no checkerboard).
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "transpose",
                 padding: int = 1, batch_norm: bool = True):
        super().__init__()
        half = in_channels // 2
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
        elif mode == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, half, kernel_size=1),
            )
        else:
            raise ValueError(f"up must be 'transpose' or 'bilinear', not {mode!r}")
        self.conv = DoubleConv(half + half, out_channels, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (N, C/2, 2h, 2w)
        if skip.shape[-2:] != x.shape[-2:]:
            # Unpadded convolutions shrink the decoder path: crop the skip's centre (paper, fig. 1).
            skip = center_crop(skip, x.shape[-2], x.shape[-1])
        x = torch.cat([skip, x], dim=1)  # (N, C, 2h, 2w)
        return self.conv(x)


class UNet(nn.Module):
    """U-Net: contracting path of `depth` poolings, expanding path with skip concatenation.

    Args:
        in_channels: image channels (1 for grayscale EM, 3 for RGB).
        num_classes: output channels: 1 for binary segmentation with a sigmoid, K for K classes.
        base_channels: channels of the first level (64 in the paper); they double at each pooling.
        depth: number of 2x2 poolings (4 in the paper).
        up: "transpose" (the paper's up-convolution) or "bilinear".
        padding: "same" pads every 3x3 convolution, so the output has the input's size; any input
            size works (the input is mirror-padded to a multiple of 2**depth and the output cropped
            back). "valid" is the paper's unpadded network: the output is smaller than the input by
            `2 * margin` pixels per side pair, and the input size must be one of `valid_input_size`.
        batch_norm: BatchNorm after each convolution (not in the paper; it trains faster and steadier).

    Shapes: x (N, in_channels, H, W) -> logits (N, num_classes, H, W) for "same",
    (N, num_classes, H - 2*margin, W - 2*margin) for "valid".
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_channels: int = 64,
                 depth: int = 4, up: str = "transpose", padding: str = "same", batch_norm: bool = True):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.num_classes = num_classes
        self.depth = depth
        self.padding = padding
        conv_padding = 1 if padding == "same" else 0
        widths = [base_channels * 2 ** level for level in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0], conv_padding, batch_norm)
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], conv_padding, batch_norm) for i in range(depth))
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], up, conv_padding, batch_norm) for i in reversed(range(depth)))
        self.outc = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self.margin = self._valid_margin() if padding == "valid" else 0
        self._init_weights()

    def _init_weights(self) -> None:
        # He initialisation, as the paper recommends for ReLU networks (std = sqrt(2 / fan_in)).
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def input_multiple(self) -> int:
        """Sides the padded network takes: multiples of 2 ** depth (it mirrors other inputs up to
        one itself); 1 for "valid", whose sizes `valid_input_size` gives."""
        return 2 ** self.depth if self.padding == "same" else 1

    # ---- geometry of the unpadded ("valid") network -------------------------------------------
    def valid_output_size(self, size: int) -> int | None:
        """Output side for an input side of `size` in "valid" mode, or None if `size` is not valid."""
        for _ in range(self.depth):
            size -= 4
            if size <= 0 or size % 2:
                return None
            size //= 2
        size -= 4
        if size <= 0:
            return None
        for _ in range(self.depth):
            size = 2 * size - 4
        return size if size > 0 else None

    def valid_input_size(self, min_output: int) -> int:
        """Smallest valid input side whose "valid" output side is at least `min_output`."""
        size = max(min_output, 1)
        while (out := self.valid_output_size(size)) is None or out < min_output:
            size += 1
        return size

    def _valid_margin(self) -> int:
        size = self.valid_input_size(1)
        return (size - self.valid_output_size(size)) // 2

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.padding == "valid":
            for side in (height, width):
                if self.valid_output_size(side) is None:
                    raise ValueError(
                        f"input side {side} does not fit the unpadded U-Net of depth {self.depth}; "
                        f"use {self.valid_input_size(max(side - 2 * self.margin, 1))} or padding='same'")
            return self._forward_core(x)
        # Pad on the far sides so every pooling halves an even size, then crop back: the
        # "Target size 512 vs input 504" mismatch of tutorial U-Nets cannot happen.
        logits = self._forward_core(pad_to_multiple(x, self.input_multiple))
        return logits[..., :height, :width]

    def _forward_core(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]  # (N, C, H, W)
        for down in self.downs:
            skips.append(down(skips[-1]))  # (N, 2^i C, H / 2^i, W / 2^i)
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)  # (N, num_classes, H, W)
