"""Sliding windows of an image and their adjoints, each in a constant number of kernels.

``windows`` cuts (..., H, W) into the k×k windows a valid convolution with stride s sees,
(..., k², L); ``pixel_sums`` is its adjoint: for every pixel, the sum over the windows covering
it, (..., k², L) → (..., H, W); ``pixel_max`` takes the largest entry instead of the sum.
``F.unfold``/``F.fold`` do the first two but launch one CUDA kernel per batch element, and under
``torch.func.vmap`` the seeds join that batch; on a CPU, col2im and the backward of
``Tensor.unfold`` also take about three times as long as what is done here. Every leading dimension
(seeds, images, channels) is alike: ``windows`` is a strided view and one copy; the adjoints lay
the windows' entries on a canvas of k² planes the size of the image (plane (i, j) holds every
window's entry at in-window position (i, j), over the pixel it covers) and reduce over the
planes. They are custom operators, so that they can say so to vmap and to autograd: ``windows``
and ``pixel_sums`` are each other's gradient.

Example:
    >>> x = torch.arange(16.0).view(1, 4, 4)
    >>> windows(x, 3, 1).shape
    torch.Size([1, 9, 4])
    >>> pixel_sums(torch.ones(1, 9, 4), 4, 4, 3, 1)[0, 0]  # windows covering the top row
    tensor([1., 2., 2., 1.])
    >>> pixel_max(windows(x, 3, 1), 4, 4, 3, 1).equal(x)  # every window holds the pixel's value
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _sides(height: int, width: int, kernel: int, stride: int) -> tuple[int, int]:
    """Windows per column and per row."""
    return (height - kernel) // stride + 1, (width - kernel) // stride + 1


@torch.library.custom_op("study::windows", mutates_args=())
def windows(x: Tensor, kernel: int, stride: int) -> Tensor:
    """(..., H, W) → (..., k², L): entry (p, l) is in-window position p of window l, windows in
    row-major order (as ``F.unfold`` orders them)."""
    view = x.unfold(-2, kernel, stride).unfold(-2, kernel, stride)  # ..., h, w, k, k
    lead, (h, w) = view.shape[:-4], view.shape[-4:-2]
    out = x.new_empty(*lead, kernel, kernel, h, w)
    out.copy_(view.movedim((-2, -1), (-4, -3)))
    return out.view(*lead, kernel * kernel, h * w)


def _canvas(shares: Tensor, height: int, width: int, kernel: int, stride: int, fill: float) -> Tensor:
    """n×k×k×H×W (n: the leading dimensions as one): plane (i, j) holds entry (i, j) of every
    window over the pixel it covers, ``fill`` where no window's entry (i, j) lies."""
    n, (h, w) = math.prod(shares.shape[:-2]), _sides(height, width, kernel, stride)
    canvas = shares.new_full((n, kernel, kernel, height, width), fill)
    step_n, step_i, step_j, step_y, step_x = canvas.stride()
    # Entry (i, j) of window (r, c) covers pixel (r·s + i, c·s + j).
    over = canvas.as_strided((n, kernel, kernel, h, w),
                             (step_n, step_i + step_y, step_j + step_x, step_y * stride, step_x * stride))
    over.copy_(shares.reshape(n, kernel, kernel, h, w))
    return canvas


@torch.library.custom_op("study::pixel_sums", mutates_args=())
def pixel_sums(shares: Tensor, height: int, width: int, kernel: int, stride: int) -> Tensor:
    """(..., k², L) → (..., H, W): for every pixel, the sum of the entries of the windows that
    cover it. Pixels no window covers (a stride that does not tile the input) are 0."""
    canvas = _canvas(shares, height, width, kernel, stride, 0.0)
    return canvas.sum((1, 2)).view(*shares.shape[:-2], height, width)


@torch.library.custom_op("study::pixel_max", mutates_args=())
def pixel_max(shares: Tensor, height: int, width: int, kernel: int, stride: int) -> Tensor:
    """(..., k², L) → (..., H, W): for every pixel, the largest entry of the windows that cover
    it; −inf where none does. No gradient: it is for shifts that cancel."""
    canvas = _canvas(shares, height, width, kernel, stride, float("-inf"))
    return canvas.amax((1, 2)).view(*shares.shape[:-2], height, width)


@windows.register_fake
def _(x: Tensor, kernel: int, stride: int) -> Tensor:
    h, w = _sides(x.shape[-2], x.shape[-1], kernel, stride)
    return x.new_empty(*x.shape[:-2], kernel * kernel, h * w)


@pixel_sums.register_fake
@pixel_max.register_fake
def _(shares: Tensor, height: int, width: int, kernel: int, stride: int) -> Tensor:
    return shares.new_empty(*shares.shape[:-2], height, width)


def _windows_setup(ctx, inputs, output) -> None:
    ctx.height, ctx.width = inputs[0].shape[-2:]
    ctx.kernel, ctx.stride = inputs[1:]


def _windows_backward(ctx, grad: Tensor):
    # Every pixel receives the gradients of the window entries it appears in.
    return pixel_sums(grad, ctx.height, ctx.width, ctx.kernel, ctx.stride), None, None


def _pixel_sums_setup(ctx, inputs, output) -> None:
    ctx.kernel, ctx.stride = inputs[3:]


def _pixel_sums_backward(ctx, grad: Tensor):
    # Every window entry receives the gradient of the pixel it covers.
    return windows(grad, ctx.kernel, ctx.stride), None, None, None, None


windows.register_autograd(_windows_backward, setup_context=_windows_setup)
pixel_sums.register_autograd(_pixel_sums_backward, setup_context=_pixel_sums_setup)


def _leading(operator):
    def rule(info, in_dims, tensor: Tensor, *geometry):
        # Leading dimensions are all alike to these operators: the vmapped one is one more.
        if in_dims[0] is None:
            return operator(tensor, *geometry), None
        return operator(tensor.movedim(in_dims[0], 0), *geometry), 0

    return rule


for _custom in (windows, pixel_sums, pixel_max):
    _custom.register_vmap(_leading(_custom))
