"""Sliding windows of an image and their adjoint, in a constant number of kernels.

``windows`` cuts (..., H, W) into the k×k windows a valid convolution with stride s sees,
(..., k², L); ``pixel_sums`` is its adjoint: for every pixel, the sum over the windows covering
it, (..., k², L) → (..., H, W). ``F.unfold``/``F.fold`` do the same but launch one CUDA kernel per
batch element, and under ``torch.func.vmap`` the seeds join that batch; here every leading
dimension (seeds, images, channels) is folded into one, so the work is one kernel whatever the
batch. ``pixel_sums`` is a custom operator so that it can say so to vmap and to autograd.

Example:
    >>> x = torch.arange(16.0).view(1, 4, 4)
    >>> windows(x, kernel=3, stride=1).shape
    torch.Size([1, 9, 4])
    >>> pixel_sums(torch.ones(1, 9, 4), 4, 4, 3, 1)[0, 0]  # windows covering the top row
    tensor([1., 2., 2., 1.])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def windows(x: Tensor, kernel: int, stride: int) -> Tensor:
    """(..., H, W) → (..., k², L): entry (p, l) is in-window position p of window l, windows in
    row-major order (as ``F.unfold`` orders them). A strided view, then one copy."""
    view = x.unfold(-2, kernel, stride).unfold(-2, kernel, stride)  # ..., h, w, k, k
    view = view.movedim((-2, -1), (-4, -3))  # ..., k, k, h, w
    return view.reshape(*view.shape[:-4], kernel * kernel, -1)


@torch.library.custom_op("study::pixel_sums", mutates_args=())
def pixel_sums(shares: Tensor, height: int, width: int, kernel: int, stride: int) -> Tensor:
    """(..., k², L) → (..., H, W): for every pixel, the sum of the entries of the windows that
    cover it. Pixels no window covers (a stride that does not tile the input) are 0."""
    lead = shares.shape[:-2]
    folded = F.fold(shares.reshape(1, -1, shares.shape[-1]), (height, width), kernel, stride=stride)
    return folded.view(*lead, height, width)


@pixel_sums.register_fake
def _(shares: Tensor, height: int, width: int, kernel: int, stride: int) -> Tensor:
    return shares.new_empty(*shares.shape[:-2], height, width)


def _setup(ctx, inputs, output) -> None:
    ctx.kernel, ctx.stride = inputs[3], inputs[4]


def _backward(ctx, grad: Tensor):
    # The adjoint of a sum over covering windows hands every window its pixels' gradients.
    return windows(grad, ctx.kernel, ctx.stride), None, None, None, None


def _vmap(info, in_dims, shares: Tensor, *geometry):
    # Leading dimensions are all alike to pixel_sums: the vmapped one is simply one more.
    moved = shares if in_dims[0] is None else shares.movedim(in_dims[0], 0)
    return pixel_sums(moved, *geometry), None if in_dims[0] is None else 0


pixel_sums.register_autograd(_backward, setup_context=_setup)
pixel_sums.register_vmap(_vmap)
