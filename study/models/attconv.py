"""AttConv: a convolution whose windows compete, iteratively, for the input pixels they explain.

Notation as in the design: x is B×C×H×W, k the kernel, L = H'·W' the number of windows, O the
output channels, T the iterations. ``X = unfold(x)`` is B×(C·k²)×L, held as B×C×k×k×H'×W' (the
same memory). The attention ``a`` (B×k×k×H'×W') is the share of each in-window pixel that a window
claims, shared across input channels; ``N`` divides every share by the sum of the shares of all
windows covering that pixel.

    a ← N(1)
    repeat T times:
        y  = (X ⊙ a)ᵀ W_bu + b_bu            bottom-up: a convolution of the attended input
        x̂  = y W_tdᵀ                         top-down prediction of every window
        e  = Σ_c x̂ ⊙ X / √C                  agreement of prediction and input
        a  = N(exp(e))                        softmax over the windows covering each pixel
    output: the last y, as B×O×H'×W'

Two readings of the original, both deliberate:

- The ``exp``. The original's appendix normalises ``e`` itself. But ``e`` is 0 in every window
  wherever the input pixel is 0 (about 84 % of a composite's pixels), so ``N(e)`` divides 0 by 0
  there; ``N(exp(e))``, a softmax over the windows covering each pixel, is the reading under
  which the equations are defined everywhere.
- No top-down bias. The original adds ``b_td`` (one per input channel) to ``x̂``. Its share of
  ``e`` at a pixel, Σ_c b_td[c]·x[c, pixel] / √C, is the same for every window covering that
  pixel, so it cancels in that softmax: the output cannot depend on ``b_td`` and ``b_td`` never
  gets a gradient (the tests check both against the equations with it). Kept, it would be a
  parameter that is counted but cannot train (1 at conv1, 6 at conv2), so it is left out.

Only the bottom-up product of the last iteration reaches the output, so the last top-down pass
is skipped: T bottom-up and T−1 top-down matrix products, never a B×(C·k²)×L×O tensor. The
products keep the windows last (W_buᵀ·X rather than Xᵀ·W_bu), the layout of X and of the output,
so no operand is copied to be transposed. Windows, per-pixel sums and maxima come from
``study.models.windows``: a constant number of kernels whatever the batch, also when
``torch.func.vmap`` stacks several seeds' layers.

On the CPU in float32, ``forward`` runs the same equations as one compiled C kernel per image
(``study.models.attconv_cpu``), which keeps an image's windows in cache through every iteration
instead of streaming the batch's through memory at each step, and leaves out the windows whose
pixels are all 0 where the input's gradient is not wanted (their output is their bias); ``steps``
(the shares and predictions, for figures) and every other device and dtype use the tensor
operations below.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from study.models import attconv_cpu
from study.models.windows import pixel_max, pixel_sums, windows


class AttConv(nn.Module):
    """Drop-in replacement for ``nn.Conv2d`` with top-down attention.

    Example:
        >>> layer = AttConv(1, 6, kernel_size=5, iterations=4)
        >>> layer(torch.rand(2, 1, 48, 48)).shape
        torch.Size([2, 6, 44, 44])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        iterations: int = 4,
        stride: int = 1,
        relu_inside: bool = False,
    ) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {iterations}")
        self.in_channels, self.out_channels = in_channels, out_channels
        # Valid windows only (no padding), as in LeNet: every window lies on real pixels.
        self.kernel_size, self.stride = kernel_size, stride
        self.iterations = iterations
        # The original's first version applied ReLU to y inside the loop; the final one did not.
        self.relu_inside = relu_inside
        fan_in = in_channels * kernel_size**2
        # Same initialisation as nn.Conv2d, so T=1 starts where a plain convolution starts.
        reference = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride)
        # Contiguous, as the CPU kernel writes their gradients (compiled code checks the layout).
        self.weight_bu = nn.Parameter(reference.weight.detach().reshape(out_channels, fan_in).T.contiguous())
        self.weight_td = nn.Parameter(self.weight_bu.detach().clone())
        self.bias_bu = nn.Parameter(reference.bias.detach().clone())

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, iterations={self.iterations}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and attconv_cpu.available():
            # The same equations as ``steps``, in one kernel per image (attconv_cpu.c).
            return attconv_cpu.attconv(x.unsqueeze(0), self.weight_bu.unsqueeze(0),
                                       self.weight_td.unsqueeze(0), self.bias_bu.unsqueeze(0),
                                       self.kernel_size, self.stride, self.iterations,
                                       self.relu_inside).squeeze(0)
        *_, (y, _, _) = self.steps(x)
        return y

    def kept_bytes(self, x: torch.Tensor) -> int:
        """Memory a training forward on ``x`` leaves outside autograd for its backward: what the CPU
        kernel keeps (``attconv_cpu.kept_bytes``), nothing where AttConv runs as tensor operations."""
        if not (x.device.type == "cpu" and x.dtype == torch.float32 and attconv_cpu.available()):
            return 0
        return attconv_cpu.kept_bytes(x.shape, self.out_channels, self.kernel_size, self.stride,
                                      self.iterations)

    def steps(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Yield, per iteration, the output ``y`` (B×O×H'×W'), the shares ``a`` it used
        (B×k×k×H'×W') and the top-down prediction ``x̂`` (B×C×k×k×H'×W'; None after the last)."""
        B, C, H, W = x.shape
        X = self._windows(x)  # B×C×k×k×H'×W'
        shape, L = X.shape[2:], X.shape[-2] * X.shape[-1]
        a = self._normalise(x.new_ones(B, *shape), H, W)
        # One product per image with the windows last, as X and the output lie: matmul would
        # fold the images into one product and copy X transposed to do so, several times slower.
        bottom_up, top_down = self.weight_bu.T.expand(B, -1, -1), self.weight_td.expand(B, -1, -1)
        for t in range(self.iterations):
            attended = (X * a.unsqueeze(1)).view(B, -1, L)
            y = torch.bmm(bottom_up, attended) + self.bias_bu.unsqueeze(-1)  # B×O×L
            if self.relu_inside:
                y = F.relu(y)
            out = y.view(B, self.out_channels, *shape[-2:])
            if t == self.iterations - 1:
                yield out, a, None
                return
            x_hat = torch.bmm(top_down, y).view(X.shape)
            e = (x_hat * X).sum(1) / math.sqrt(C)
            yield out, a, x_hat
            a = self._normalise(self._stable_exp(e, H, W), H, W)

    def _pixel_sums(self, a: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return pixel_sums(a, H, W, self.stride)

    def _windows(self, per_pixel: torch.Tensor) -> torch.Tensor:
        return windows(per_pixel, self.kernel_size, self.stride)

    def _normalise(self, shares: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """``N``: sum each pixel's shares, then scale every share by its pixel's reciprocal (a
        division per pixel rather than per share)."""
        return shares * self._windows(self._pixel_sums(shares, H, W).reciprocal())

    def _stable_exp(self, e: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """exp(e) shifted by each pixel's max over the windows covering it: the same after
        ``N``, but every pixel keeps one share of exactly 1, so nothing overflows and no
        denominator is 0, whatever the weights."""
        with torch.no_grad():  # a shift shared by a pixel's windows cancels in N
            shift = self._windows(pixel_max(e, H, W, self.stride))
        return torch.exp(e - shift)

    def prediction(self, a: torch.Tensor, x_hat: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Each input pixel's top-down prediction (B×C×H×W): the windows' predictions ``x_hat``
        (B×C×k×k×H'×W') weighted by the shares ``a`` (B×k×k×H'×W') with which they claim it."""
        return self._pixel_sums(x_hat * a.unsqueeze(1), height, width)

    def attention_per_pixel(self, a: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Each input pixel's shares summed over the windows covering it (B×1×H×W): 1 wherever
        a window reaches after ``N``; for tests and figures."""
        return self._pixel_sums(a, height, width).unsqueeze(1)
