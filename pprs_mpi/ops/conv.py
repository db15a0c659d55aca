"""2-D convolution and max pooling on (B, C, H, W) images, vectorised over pixels and batch.

Both loop only over the kernel offsets (kh·kw strided slices), which NumPy and CuPy handle alike.
"""

from __future__ import annotations

import numpy as np

from pprs_mpi.ops._util import pair
from pprs_mpi.ops.base import Op


def _out_size(size: int, kernel: int, stride: int, pad: int, axis: str) -> int:
    out = (size + 2 * pad - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"kernel {kernel} does not fit {axis} {size} with padding {pad}")
    return out


def _offsets(kernel: tuple[int, int], stride: tuple[int, int], out_hw: tuple[int, int]):
    """(i, j, rows, cols) for each kernel offset: the slices of the (padded) input that offset reads."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)


def _check_image(shape, channels: int | None = None) -> None:
    if len(shape) != 3:
        raise ValueError(f"input must be an image (C, H, W), got shape {tuple(shape)}")
    if channels is not None and shape[0] != channels:
        raise ValueError(f"input must have {channels} channels, got shape {tuple(shape)}")


class Conv2d(Op):
    """Cross-correlation with constant weight (F, C, kh, kw) and bias (F,): (B, C, H, W) -> (B, F, H', W').

    H' = (H + 2·pad_h − kh) // stride_h + 1 (zero padding), likewise W'. Computed as im2col followed by
    one batched matmul; the VJP (w.r.t. the input only, the weights being constant) is one matmul and col2im.
    """

    def __init__(self, weight, bias=None, stride=1, padding=0):
        self.weight = np.asarray(weight)
        if self.weight.ndim != 4:
            raise ValueError(f"Conv2d: weight must be (F, C, kh, kw), got shape {self.weight.shape}")
        self.bias = None if bias is None else np.asarray(bias)
        if self.bias is not None and self.bias.shape != self.weight.shape[:1]:
            raise ValueError(f"Conv2d: bias must have shape {self.weight.shape[:1]}, got {self.bias.shape}")
        self.stride, self.padding = pair(stride, "stride"), pair(padding, "padding")
        if min(self.stride) < 1:
            raise ValueError(f"Conv2d: stride must be >= 1, got {stride!r}")
        self.kernel = self.weight.shape[2:]

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return _out_size(h, kh, sh, ph, "height"), _out_size(w, kw, sw, pw, "width")

    def output_shape(self, shape):
        _check_image(shape, self.weight.shape[1])
        ho, wo = self._out_hw(*shape[1:])
        self.declare_macs(self.weight.size * ho * wo)
        return (self.weight.shape[0], ho, wo)

    def forward(self, xp, x):
        B, C, H, W = x.shape
        ho, wo = self._out_hw(H, W)
        (ph, pw), (kh, kw) = self.padding, self.kernel
        padded = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
        cols = xp.empty((B, C, kh, kw, ho, wo), dtype=x.dtype)
        for i, j, rows, cs in _offsets(self.kernel, self.stride, (ho, wo)):
            cols[:, :, i, j] = padded[:, :, rows, cs]
        weight = self.const(xp, "weight", x.dtype).reshape(self.weight.shape[0], -1)
        out = xp.matmul(weight, cols.reshape(B, C * kh * kw, ho * wo)).reshape(B, -1, ho, wo)
        if self.bias is not None:
            out += self.const(xp, "bias", x.dtype)[:, None, None]
        return out

    def vjp(self, xp, inputs, output, cotangent):
        x = inputs[0]
        B, C, H, W = x.shape
        F, ho, wo = cotangent.shape[1:]
        (ph, pw), (kh, kw) = self.padding, self.kernel
        weight = self.const(xp, "weight", cotangent.dtype).reshape(F, -1)
        dcols = xp.matmul(weight.T, cotangent.reshape(B, F, ho * wo)).reshape(B, C, kh, kw, ho, wo)
        grad = xp.zeros((B, C, H + 2 * ph, W + 2 * pw), dtype=cotangent.dtype)
        for i, j, rows, cs in _offsets(self.kernel, self.stride, (ho, wo)):
            grad[:, :, rows, cs] += dcols[:, :, i, j]
        return (xp.ascontiguousarray(grad[:, :, ph:ph + H, pw:pw + W]),)

    def describe(self):
        F, C, kh, kw = self.weight.shape
        return f"Conv2d({C}->{F}, {kh}x{kw}, stride={self.stride}, padding={self.padding})"


class MaxPool2d(Op):
    """Max over kernel windows of each channel: (B, C, H, W) -> (B, C, H', W'), H' = (H − kh) // stride_h + 1.

    No padding; trailing rows/columns that no window covers are dropped. Subgradient at a tie: the whole
    gradient of a window goes to its first maximal element in row-major window order.
    """

    def __init__(self, kernel, stride=None):
        self.kernel = pair(kernel, "kernel")
        self.stride = self.kernel if stride is None else pair(stride, "stride")
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise ValueError(f"MaxPool2d: kernel and stride must be >= 1, got {kernel!r}, {stride!r}")

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw) = self.kernel, self.stride
        return _out_size(h, kh, sh, 0, "height"), _out_size(w, kw, sw, 0, "width")

    def output_shape(self, shape):
        _check_image(shape)
        return (shape[0],) + self._out_hw(*shape[1:])

    def _windows(self, xp, x):
        """All window entries stacked on a new leading axis: (kh·kw, B, C, H', W')."""
        out_hw = self._out_hw(*x.shape[2:])
        return xp.stack([x[:, :, rows, cs] for _, _, rows, cs in _offsets(self.kernel, self.stride, out_hw)])

    def forward(self, xp, x):
        return self._windows(xp, x).max(axis=0)

    def vjp(self, xp, inputs, output, cotangent):
        x = inputs[0]
        first = xp.argmax(self._windows(xp, x), axis=0)
        grad = xp.zeros(x.shape, dtype=cotangent.dtype)
        for t, (_, _, rows, cs) in enumerate(_offsets(self.kernel, self.stride, cotangent.shape[2:])):
            grad[:, :, rows, cs] += (first == t) * cotangent
        return (grad,)

    def describe(self):
        return f"MaxPool2d(kernel={self.kernel}, stride={self.stride})"
