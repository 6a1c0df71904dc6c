import math

import pytest
import torch
import torch.nn.functional as F

from study.models import AttConv, LeNet, Stacked
from study.sections import ModelConfig


def loop_reference(layer: AttConv, x: torch.Tensor, b_td: torch.Tensor | None = None) -> torch.Tensor:
    """The design's equations, one window and one pixel at a time (slow, float64, batch of one),
    with the original's top-down bias ``b_td`` (one per input channel; 0 when not given)."""
    (C, H, W), k, s, T = x.shape[1:], layer.kernel_size, layer.stride, layer.iterations
    w_bu, w_td = layer.weight_bu.double(), layer.weight_td.double()
    b_bu = layer.bias_bu.double()
    b_td = torch.zeros(C, dtype=torch.float64) if b_td is None else b_td
    img = x[0].double()
    windows = [(i, j) for i in range(0, H - k + 1, s) for j in range(0, W - k + 1, s)]
    offsets = [(di, dj) for di in range(k) for dj in range(k)]

    def normalise(shares):
        total = torch.zeros(H, W, dtype=torch.float64)
        for (i, j), row in zip(windows, shares, strict=True):
            for (di, dj), v in zip(offsets, row, strict=True):
                total[i + di, j + dj] += v
        return [[v / total[i + di, j + dj] for (di, dj), v in zip(offsets, row, strict=True)]
                for (i, j), row in zip(windows, shares, strict=True)]

    a = normalise([[1.0] * k * k for _ in windows])
    for _ in range(T):
        ys, es = [], []
        for (i, j), shares in zip(windows, a, strict=True):
            patch = [img[c, i + di, j + dj] for c in range(C) for (di, dj) in offsets]
            y = b_bu.clone()
            for c in range(C):
                for p in range(k * k):
                    y = y + patch[c * k * k + p] * shares[p] * w_bu[c * k * k + p]
            x_hat = [(y * w_td[c * k * k + p]).sum() + b_td[c] for c in range(C) for p in range(k * k)]
            es.append([sum(x_hat[c * k * k + p] * patch[c * k * k + p] for c in range(C)) / math.sqrt(C)
                       for p in range(k * k)])
            ys.append(y)
        a = normalise([[torch.exp(v) for v in row] for row in es])
    return torch.stack(ys).T.reshape(1, -1, (H - k) // s + 1, (W - k) // s + 1)


def windows_per_pixel(shape, k, s):
    return F.fold(F.unfold(torch.ones(shape), k, stride=s), shape[-2:], k, stride=s)


@pytest.mark.parametrize(("C", "H", "W", "k", "s", "T"),
                         [(1, 6, 6, 3, 1, 3), (2, 7, 7, 3, 2, 2), (3, 5, 8, 3, 1, 2)])
def test_matches_a_loop_reference_on_a_tiny_input(C, H, W, k, s, T):
    torch.manual_seed(0)
    layer = AttConv(C, 3, k, iterations=T, stride=s).double()
    with torch.no_grad():
        layer.weight_td.add_(0.3 * torch.randn_like(layer.weight_td))  # make top-down differ
    x = torch.rand(1, C, H, W, dtype=torch.float64)  # several channels, stride, non-square
    with torch.no_grad():
        expected = loop_reference(layer, x)
    torch.testing.assert_close(layer(x), expected)


def test_shares_of_every_pixel_sum_to_one_after_every_normalisation():
    torch.manual_seed(1)
    layer = AttConv(3, 4, 5, iterations=5)
    x = torch.rand(2, 3, 20, 20)
    steps = list(layer.steps(x))
    assert len(steps) == 5
    for _, a, _ in steps:
        assert (a > 0).all()
        torch.testing.assert_close(layer.attention_per_pixel(a, 20, 20), torch.ones(2, 1, 20, 20))
    assert not torch.allclose(steps[0][1], steps[-1][1])  # attention actually moved


def test_one_iteration_is_a_convolution_of_the_input_divided_by_its_window_count():
    torch.manual_seed(2)
    layer = AttConv(2, 5, 5, iterations=1)
    x = torch.rand(3, 2, 16, 16)
    weight = layer.weight_bu.T.reshape(5, 2, 5, 5)
    expected = F.conv2d(x / windows_per_pixel(x.shape, 5, 1), weight, layer.bias_bu)
    torch.testing.assert_close(layer(x), expected)
    counts = windows_per_pixel((1, 1, 16, 16), 5, 1)
    assert counts[0, 0, 0, 0] == 1 and counts[0, 0, 8, 8] == 25  # corner vs interior


def test_the_originals_top_down_bias_cannot_change_the_output_or_train():
    """Why the layer has no b_td: with the original's equations, a large b_td leaves the output
    as it is and gets no gradient, while a change of W_td of the same size moves the output."""
    torch.manual_seed(4)
    layer = AttConv(2, 3, 3, iterations=3).double()
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    b_td = (5 * torch.randn(2, dtype=torch.float64)).requires_grad_()
    with_bias = loop_reference(layer, x, b_td)
    torch.testing.assert_close(with_bias, layer(x).detach(), rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(with_bias.square().sum(), b_td)
    assert grad.abs().max() < 1e-12
    with torch.no_grad():
        layer.weight_td.add_(0.05)
        assert (layer(x) - with_bias).abs().max() > 1e-3  # the comparison above can see a change


def test_gradients_reach_all_three_parameter_tensors():
    layer = AttConv(1, 6, 5, iterations=3)
    assert [name for name, _ in layer.named_parameters()] == ["weight_bu", "weight_td", "bias_bu"]
    layer(torch.rand(2, 1, 12, 12)).square().sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_top_down_weights_start_as_a_copy_of_bottom_up():
    layer = AttConv(3, 8, 5)
    assert torch.equal(layer.weight_td, layer.weight_bu)
    assert layer.weight_td.data_ptr() != layer.weight_bu.data_ptr()
    assert layer.bias_bu.shape == (8,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_weights_give_no_inf_or_nan(dtype):
    torch.manual_seed(3)
    layer = AttConv(2, 4, 5, iterations=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(1e3)
    layer = layer.to(dtype)
    x = (torch.rand(2, 2, 14, 14) * 10).to(dtype)
    for y, a, _ in layer.steps(x):
        assert torch.isfinite(y).all() and torch.isfinite(a).all()
        sums = layer.attention_per_pixel(a.float(), 14, 14)
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=2e-2, rtol=0)


def test_no_tensor_of_size_batch_by_windows_by_outputs_by_inputs():
    """The tensor operations (float64 here; float32 CPU runs the kernel, which holds one image's
    windows at a time) use matrix products, never materialising B×(C·k²)×L×O."""
    B, C, k, out_channels, side = 4, 3, 5, 8, 16
    layer = AttConv(C, out_channels, k, iterations=3).double()
    unfolded = B * C * k * k * (side - k + 1) ** 2
    largest = 0

    class Watch(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal largest
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else [out]:
                if isinstance(t, torch.Tensor):
                    largest = max(largest, t.numel())
            return out

    with Watch():
        layer(torch.rand(B, C, side, side, dtype=torch.float64)).sum().backward()
    assert largest == unfolded  # the unfolded input X is the largest tensor; X·O never exists


def test_prediction_of_a_perfect_top_down_pass_is_the_input():
    # Shares sum to 1 over the windows covering each pixel, so windows predicting exactly their
    # input reconstruct it whatever the shares are.
    torch.manual_seed(0)
    layer = AttConv(2, 4, 3, iterations=3)
    x = torch.rand(2, 2, 9, 7)
    *_, (_, a, _) = layer.steps(x)
    X = F.unfold(x, 3).view(2, 2, 3, 3, 7, 5)  # every window's own pixels, B×C×k×k×H'×W'
    torch.testing.assert_close(layer.prediction(a, X, 9, 7), x)


class Dispatched(torch.utils._python_dispatch.TorchDispatchMode):
    """Every aten call below autograd and vmap: what would reach the device as kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        self.calls.append((str(func.overloadpacket), tuple(first.shape) if first is not None else ()))
        return func(*args, **(kwargs or {}))


def dispatched(seeds: int, batch: int) -> list[tuple[str, tuple]]:
    """The tensor operations' calls (float64: float32 on a CPU would run the kernel instead)."""
    torch.manual_seed(0)
    stack = Stacked([LeNet(ModelConfig(attention={"layers": [0, 1], "iterations": 3}), 28).double()
                     for _ in range(seeds)])
    with Dispatched() as mode:
        stack(torch.rand(seeds, batch, 1, 28, 28, dtype=torch.float64)).sum().backward()
    return mode.calls


def test_attconv_work_does_not_grow_with_the_batch_or_the_seeds():
    """On CUDA, aten.im2col and aten.col2im (behind F.unfold and F.fold) launch one kernel per
    batch element, and vmap folds the seeds into that batch; a CPU profile does not show it. So:
    the same aten calls whatever the batch and seed count, and im2col/col2im only ever see a
    batch of one."""
    # Sizes above one on both sides: vmap and autograd treat a dimension of one specially.
    small, large = dispatched(seeds=2, batch=2), dispatched(seeds=3, batch=16)
    assert [name for name, _ in small] == [name for name, _ in large]
    for name, shape in large:
        if name in ("aten.im2col", "aten.col2im"):
            assert shape[0] == 1, f"{name} got a batch of {shape[0]}"
