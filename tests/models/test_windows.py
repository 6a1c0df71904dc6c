import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from study.models.windows import pixel_max, pixel_sums, windows

# (channels, height, width, kernel, stride): square and not, a stride that leaves pixels uncovered.
GEOMETRIES = [(1, 6, 6, 3, 1), (2, 7, 9, 3, 2), (3, 8, 5, 2, 3)]


def covering(H, W, k, s):
    """For every pixel, the (in-window position, window) entries that cover it, by hand."""
    h, w = (H - k) // s + 1, (W - k) // s + 1
    cover = {(i, j): [] for i in range(H) for j in range(W)}
    for r in range(h):
        for c in range(w):
            for di in range(k):
                for dj in range(k):
                    cover[r * s + di, c * s + dj].append((di * k + dj, r * w + c))
    return cover


@pytest.mark.parametrize(("C", "H", "W", "k", "s"), GEOMETRIES)
def test_windows_and_pixel_sums_are_unfold_and_fold(C, H, W, k, s):
    x = torch.rand(2, C, H, W, dtype=torch.float64)
    X = windows(x, k, s)
    torch.testing.assert_close(X.reshape(2, C * k * k, -1), F.unfold(x, k, stride=s), rtol=0, atol=0)
    shares = torch.rand_like(X)
    torch.testing.assert_close(pixel_sums(shares, H, W, s),
                               F.fold(shares.reshape(2, C * k * k, -1), (H, W), k, stride=s))


@pytest.mark.parametrize(("C", "H", "W", "k", "s"), GEOMETRIES)
def test_pixel_max_is_the_largest_entry_covering_each_pixel(C, H, W, k, s):
    h, w = (H - k) // s + 1, (W - k) // s + 1
    shares = torch.randn(2, C, k, k, h, w)
    flat = shares.view(2, C, k * k, h * w)
    expected = torch.full((2, C, H, W), float("-inf"))
    for (i, j), entries in covering(H, W, k, s).items():
        for p, window in entries:
            expected[..., i, j] = torch.maximum(expected[..., i, j], flat[..., p, window])
    torch.testing.assert_close(pixel_max(shares, H, W, s), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("C", "H", "W", "k", "s"), GEOMETRIES)
def test_gradients_are_each_others_adjoint(C, H, W, k, s):
    x = torch.rand(2, C, H, W, dtype=torch.float64, requires_grad=True)
    shares = torch.rand(2, C, k, k, (H - k) // s + 1, (W - k) // s + 1, dtype=torch.float64,
                        requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: windows(t, k, s), (x,))
    assert torch.autograd.gradcheck(lambda t: pixel_sums(t, H, W, s), (shares,))
    assert torch.autograd.gradgradcheck(lambda t: pixel_sums(t, H, W, s), (shares,))


def test_vmap_treats_the_mapped_dimension_as_one_more_leading_one():
    x = torch.rand(3, 2, 7, 9)
    shares = windows(x, 3, 2)
    for in_dim in (0, 1):
        torch.testing.assert_close(vmap(windows, in_dims=(in_dim, None, None))(x.movedim(0, in_dim), 3, 2),
                                   shares, rtol=0, atol=0)
        for operator in (pixel_sums, pixel_max):
            mapped = vmap(operator, in_dims=(in_dim, None, None, None))
            torch.testing.assert_close(mapped(shares.movedim(0, in_dim), 7, 9, 2),
                                       operator(shares, 7, 9, 2), rtol=0, atol=0)


def test_the_operators_pass_torchs_custom_operator_checks():
    """Schema, autograd registration, fake tensors (torch.compile, meta devices), AOT dispatch."""
    ops = torch.ops.study
    for operator, args in [(ops.windows.default, (torch.rand(2, 5, 7, requires_grad=True), 3, 2)),
                           (ops.pixel_sums.default, (torch.rand(2, 3, 3, 2, 3, requires_grad=True), 5, 7, 2)),
                           (ops.pixel_max.default, (torch.rand(2, 3, 3, 2, 3), 5, 7, 2))]:
        torch.library.opcheck(operator, args)
