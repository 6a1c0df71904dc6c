"""Sliding windows of an image and their adjoints, each in a constant number of kernels.

``windows`` cuts (..., H, W) into the k×k windows a valid convolution with stride s sees,
(..., k, k, h, w): in-window position, then the window's row and column. ``pixel_sums`` is its
adjoint: for every pixel, the sum over the windows covering it, (..., k, k, h, w) → (..., H, W);
``pixel_max`` takes the largest entry instead of the sum. ``F.unfold``/``F.fold`` do the first two
but launch one CUDA kernel per batch element, and under ``torch.func.vmap`` the seeds join that
batch; on a CPU, col2im and the backward of ``Tensor.unfold`` also take about twice as long as
what is done here. Every leading dimension (seeds, images, channels) is alike: ``windows`` is a
strided view and one copy; the adjoints add (or take the maximum of) the k² planes of window
entries, one in-window position at a time, into an output the size of the image, so the shares
are read once and nothing k² times the image is written. They are custom operators, so that they
can say so to vmap and to autograd: ``windows`` and ``pixel_sums`` are each other's gradient.

Example:
    >>> x = torch.arange(16.0).view(1, 4, 4)
    >>> windows(x, 3, 1).shape  # 3×3 positions in each of 2×2 windows
    torch.Size([1, 3, 3, 2, 2])
    >>> pixel_sums(torch.ones(1, 3, 3, 2, 2), 4, 4, 1)[0, 0]  # windows covering the top row
    tensor([1., 2., 2., 1.])
    >>> pixel_max(windows(x, 3, 1), 4, 4, 1).equal(x)  # every window holds the pixel's value
    True
"""

from __future__ import annotations

import torch
from torch import Tensor


def sides(height: int, width: int, kernel: int, stride: int) -> tuple[int, int]:
    """Windows per column and per row."""
    return (height - kernel) // stride + 1, (width - kernel) // stride + 1


@torch.library.custom_op("study::windows", mutates_args=())
def windows(x: Tensor, kernel: int, stride: int) -> Tensor:
    """(..., H, W) → (..., k, k, h, w): entry (i, j, r, c) is in-window position (i, j) of the
    window in row r and column c, i.e. pixel (r·s + i, c·s + j)."""
    view = x.unfold(-2, kernel, stride).unfold(-2, kernel, stride)  # ..., h, w, k, k
    # A copy whatever the strides (a 1×1 window's view is already contiguous): never an alias.
    return view.movedim((-2, -1), (-4, -3)).clone(memory_format=torch.contiguous_format)


def _accumulate(shares: Tensor, height: int, width: int, stride: int, fill: float, combine) -> Tensor:
    """(..., H, W) filled with ``fill``, into which every in-window position's plane of window
    entries (..., h, w) is combined in place over the pixels it covers: k² small operations whose
    output (the image's size, not k² times it) stays in cache while the shares stream past once."""
    kernel, (h, w) = shares.shape[-4], shares.shape[-2:]
    out = shares.new_full((*shares.shape[:-4], height, width), fill)
    for i in range(kernel):
        for j in range(kernel):
            over = out[..., i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride]
            combine(over, shares[..., i, j, :, :], out=over)
    return out


@torch.library.custom_op("study::pixel_sums", mutates_args=())
def pixel_sums(shares: Tensor, height: int, width: int, stride: int) -> Tensor:
    """(..., k, k, h, w) → (..., H, W): for every pixel, the sum of the entries of the windows
    that cover it. Pixels no window covers (a stride that does not tile the input) are 0."""
    return _accumulate(shares, height, width, stride, 0.0, torch.add)


@torch.library.custom_op("study::pixel_max", mutates_args=())
def pixel_max(shares: Tensor, height: int, width: int, stride: int) -> Tensor:
    """(..., k, k, h, w) → (..., H, W): for every pixel, the largest entry of the windows that
    cover it; −inf where none does. No gradient: it is for shifts that cancel."""
    return _accumulate(shares, height, width, stride, float("-inf"), torch.maximum)


@windows.register_fake
def _(x: Tensor, kernel: int, stride: int) -> Tensor:
    h, w = sides(x.shape[-2], x.shape[-1], kernel, stride)
    return x.new_empty(*x.shape[:-2], kernel, kernel, h, w)


@pixel_sums.register_fake
@pixel_max.register_fake
def _(shares: Tensor, height: int, width: int, stride: int) -> Tensor:
    return shares.new_empty(*shares.shape[:-4], height, width)


def _windows_setup(ctx, inputs, output) -> None:
    ctx.height, ctx.width = inputs[0].shape[-2:]
    ctx.stride = inputs[2]


def _windows_backward(ctx, grad: Tensor):
    # Every pixel receives the gradients of the window entries it appears in.
    return pixel_sums(grad, ctx.height, ctx.width, ctx.stride), None, None


def _pixel_sums_setup(ctx, inputs, output) -> None:
    ctx.kernel, ctx.stride = inputs[0].shape[-4], inputs[3]


def _pixel_sums_backward(ctx, grad: Tensor):
    # Every window entry receives the gradient of the pixel it covers.
    return windows(grad, ctx.kernel, ctx.stride), None, None, None


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
