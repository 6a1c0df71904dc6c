"""AttConv's CPU kernel against the equations: the tensor operations in float64 (themselves checked
against a loop over windows in test_attconv.py), the loop itself, stacked seeds, torch.compile,
threads, and the fallback where no compiler builds it."""

import logging
import os
import shutil

import pytest
import torch

from study.models import AttConv, LeNet, Stacked, attconv_cpu
from study.sections import ModelConfig
from tests.models.test_attconv import loop_reference

# Where there is a compiler the kernel must build: a failed build fails these tests, not skips them.
pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                reason="no C compiler on this machine")


def reference(layer: AttConv, x: torch.Tensor) -> torch.Tensor:
    """The tensor operations in float64, whatever the layer's dtype."""
    *_, (y, _, _) = layer.steps(x)
    return y


def gradients(fn, x: torch.Tensor, params: list[torch.Tensor], weight: torch.Tensor):
    """The output and the gradients of (output · weight).sum(): the input's (if it requires one)
    and the parameters'."""
    y = fn(x)
    wrt = [x, *params] if x.requires_grad else params
    return y.detach(), torch.autograd.grad((y * weight).sum(), wrt, allow_unused=True)


@pytest.mark.parametrize(("C", "H", "W", "k", "s", "T", "relu", "outputs"), [
    (1, 48, 48, 5, 1, 4, False, 6),   # conv1 of a 48-pixel canvas
    (6, 22, 22, 5, 1, 4, False, 16),  # conv2
    (3, 9, 11, 3, 2, 3, True, 4),     # stride that does not tile, ReLU inside, not square
    (2, 10, 10, 3, 1, 1, False, 5),   # one iteration: no top-down pass at all
    (1, 12, 12, 5, 1, 8, False, 9),   # more outputs than a register block holds
    (2, 10, 10, 3, 1, 3, False, 20),  # more than a prediction holds in registers (padded to 24)
])
def test_output_and_every_gradient_match_the_equations_in_float64(C, H, W, k, s, T, relu, outputs):
    torch.manual_seed(0)
    assert attconv_cpu.available()
    layer = AttConv(C, outputs, k, iterations=T, stride=s, relu_inside=relu)
    with torch.no_grad():
        layer.weight_td.add_(0.5 * torch.randn_like(layer.weight_td))  # top-down differs
    x = torch.rand(3, C, H, W, requires_grad=True)
    weight = torch.randn(3, outputs, (H - k) // s + 1, (W - k) // s + 1, dtype=torch.float64)
    y, grads = gradients(layer, x, list(layer.parameters()), weight.float())
    exact = layer.double()
    y64, grads64 = gradients(lambda v: reference(exact, v), x.detach().double().requires_grad_(),
                             list(exact.parameters()), weight)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(["x", "weight_bu", "weight_td", "bias_bu"], grads, grads64, strict=True):
        if want is None:  # W_td at T = 1 never reaches the output
            assert got is None, name
            continue
        scale = want.abs().max().clamp(min=1e-12)
        assert (got.double() - want).abs().max() / scale < 1e-5, name


def test_matches_the_loop_over_windows():
    torch.manual_seed(1)
    layer = AttConv(2, 3, 3, iterations=3)
    with torch.no_grad():
        layer.weight_td.mul_(-2.0)
    x = torch.rand(1, 2, 7, 8)
    expected = loop_reference(layer, x)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("scale", "lowest", "highest"), [(1, 9, 44), (30, 8000, 36000)])
def test_shares_far_apart_stay_finite_and_match(scale, lowest, highest):
    """Large weights spread an image's e over tens (one shift for the image: shares down to
    e^−44) or thousands (each pixel's own shift): the kernel's exp must neither overflow nor
    lose the winning window, as the tensor operations' shift guarantees."""
    torch.manual_seed(3)
    layer = AttConv(2, 4, 5, iterations=4)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(scale)
    x = torch.rand(2, 2, 14, 14) * 10
    with torch.no_grad():  # each image's e at each iteration, from the tensor operations
        X = layer._windows(x)
        agreements = [(x_hat * X).sum(1) / 2**0.5 for _, _, x_hat in layer.steps(x) if x_hat is not None]
    spans = torch.stack([e.amax((1, 2, 3, 4)).clamp(min=0) - e.amin((1, 2, 3, 4)).clamp(max=0)
                         for e in agreements])
    assert lowest <= spans.min() and spans.max() <= highest
    y = layer(x)
    assert torch.isfinite(y).all()
    expected = reference(layer.double(), x.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-3 * expected.abs().max().item())


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False])
def test_stacked_seeds_are_each_their_own_network(shared):
    """Under vmap, weights of their own per seed (and the images shared or not) give what each
    network gives alone, gradients included."""
    torch.manual_seed(2)
    config = ModelConfig(attention={"layers": [0, 1], "iterations": 3})
    nets = [LeNet(config, 28) for _ in range(3)]
    stack = Stacked(nets)
    x = torch.rand(4, 1, 28, 28) if shared else torch.rand(3, 4, 1, 28, 28)
    logits = stack(x, shared=shared)
    logits.square().sum().backward()
    for n, net in enumerate(nets):
        alone = net.double()(x.double() if shared else x[n].double())
        alone.square().sum().backward()
        torch.testing.assert_close(logits[n].double(), alone, rtol=1e-5, atol=1e-5)
        for name, p in net.named_parameters():
            # A bias before batch norm cancels in it: its exact gradient is 0, its float32 one noise.
            torch.testing.assert_close(stack.params[name].grad[n].double(), p.grad, rtol=1e-4,
                                       atol=max(1e-5, 1e-5 * p.grad.abs().max().item()), msg=name)


def test_the_kernels_choice_carries_the_mark_of_torchs_assume_constant_result():
    """``available`` is marked as the decorator marks a function, without importing dynamo; the
    compile below fails (a graph break) if the mark stops working."""
    marked = torch.compiler.assume_constant_result(lambda: None)
    assert vars(marked) and vars(marked).items() <= vars(attconv_cpu.available).items()


@pytest.mark.slow
def test_compiled_without_a_graph_break_gives_the_same_numbers():
    torch.manual_seed(5)
    layer = AttConv(1, 6, 5, iterations=4)
    x = torch.rand(4, 1, 20, 20, requires_grad=True)

    def loss(v):
        return layer(v).square().sum()

    eager = torch.autograd.grad(loss(x), [x, *layer.parameters()])
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x), [x, *layer.parameters()])
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want)


def test_threads_split_the_images_not_the_numbers():
    torch.manual_seed(6)
    layer = AttConv(3, 4, 3, iterations=3)
    x = torch.rand(7, 3, 12, 12, requires_grad=True)  # 7 images over threads: uneven parts
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            y = layer(x)
            results.append((y, *torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])))
    finally:
        torch.set_num_threads(threads)
    for one, several in zip(*results, strict=True):
        torch.testing.assert_close(one, several)


def test_without_a_compiler_attconv_says_so_once_and_computes_the_same(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("STUDY_CACHE", str(tmp_path))  # nothing built yet
    attconv_cpu._library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="study.models.attconv_cpu"):
            assert not attconv_cpu.available()
            assert not attconv_cpu.available()
        assert len(caplog.records) == 1 and "no-such-compiler" in caplog.text
        torch.manual_seed(7)
        layer = AttConv(1, 3, 3, iterations=2)
        x = torch.rand(2, 1, 8, 8)
        torch.testing.assert_close(layer(x), reference(layer, x))
        assert not (tmp_path / "kernels").exists() or not list((tmp_path / "kernels").glob("*.so"))
    finally:
        attconv_cpu._library.cache_clear()


def test_flops_are_counted_as_for_the_tensor_operations():
    from torch.utils.flop_counter import FlopCounterMode

    layer = AttConv(6, 16, 5, iterations=4)
    counts = []
    for dtype in (torch.float32, torch.float64):  # the kernel, then the tensor operations
        with FlopCounterMode(display=False) as counter:
            layer.to(dtype)(torch.rand(2, 6, 12, 12, dtype=dtype))
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("threads", [1, 2])
def test_many_images_in_one_part_with_padded_rows_match_the_equations(threads):
    """Twenty conv2-shaped images (324 windows, a row padded to 328 or 336) per thread part: the padding
    lanes must stay zero from image to image, not be carried through the exp again and again."""
    torch.manual_seed(8)
    layer = AttConv(6, 16, 5, iterations=4)
    with torch.no_grad():
        layer.weight_td.add_(0.5 * torch.randn_like(layer.weight_td))
    x = torch.rand(20 * threads, 6, 22, 22, requires_grad=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, grads = gradients(layer, x, list(layer.parameters()), torch.ones(1))
    finally:
        torch.set_num_threads(before)
    exact = layer.double()
    y64, grads64 = gradients(lambda v: reference(exact, v), x.detach().double().requires_grad_(),
                             list(exact.parameters()), torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads64, strict=True):
        assert (got.double() - want).abs().max() / want.abs().max() < 1e-5


def ink(n: int, C: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """Images that are mostly 0, as composite digits are: a few blobs of ink on an empty canvas,
    some in one channel only; image 0 empty, image 1 a single pixel."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, C, H, W)
    for image in x[2:]:
        for _ in range(2):
            r, c = (int(torch.randint(0, side - 2, (), generator=generator)) for side in (H, W))
            blob = torch.rand(C, min(4, H - r), min(5, W - c), generator=generator)
            blob *= torch.rand(C, 1, 1, generator=generator) < 0.7  # some channels without ink
            image[:, r:r + blob.shape[1], c:c + blob.shape[2]] = blob
    x[1, -1, H // 2, W // 2] = 0.7
    return x


# Layers on images mostly 0 (``ink``), where the kernel leaves windows out.
INKED_SHAPES = pytest.mark.parametrize(("C", "H", "W", "k", "s", "T", "relu", "outputs"), [
    (1, 48, 48, 5, 1, 4, False, 6),   # conv1 of a 48-pixel canvas
    (6, 22, 22, 5, 1, 4, True, 16),   # conv2's shape, ReLU inside
    (3, 9, 11, 3, 2, 3, True, 4),     # stride that does not tile, not square
    (2, 12, 12, 3, 2, 2, False, 3),   # a stride leaving the last row and column in no window
    (2, 10, 10, 3, 1, 1, False, 5),   # one iteration
])


@pytest.mark.parametrize("threads", [1, 2])
@INKED_SHAPES
def test_windows_of_zeros_left_out_change_no_number(C, H, W, k, s, T, relu, outputs, threads):
    """Where the input's gradient is not wanted (conv1), windows whose pixels are all 0 are left
    out: their output is their bias (through the ReLU), their gradients reach only the bias. On
    images mostly 0, an empty one and one of a single pixel, with biases of both signs: the
    output and every weight's gradient as the equations give them in float64."""
    torch.manual_seed(1)
    layer = AttConv(C, outputs, k, iterations=T, stride=s, relu_inside=relu)
    with torch.no_grad():
        layer.weight_td.add_(0.5 * torch.randn_like(layer.weight_td))
        layer.bias_bu.copy_(torch.linspace(-0.5, 0.5, outputs))
    x = ink(3 * threads + 2, C, H, W)
    weight = torch.randn(len(x), outputs, (H - k) // s + 1, (W - k) // s + 1, dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, grads = gradients(layer, x, list(layer.parameters()), weight.float())
    finally:
        torch.set_num_threads(before)
    exact = layer.double()
    y64, grads64 = gradients(lambda v: reference(exact, v), x.double(), list(exact.parameters()), weight)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(["weight_bu", "weight_td", "bias_bu"], grads, grads64, strict=True):
        if want is None:  # W_td's at T = 1
            assert got is None, name
            continue
        assert (got.double() - want).abs().max() / want.abs().max() < 1e-5, name


def kept_forward(layer: AttConv, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's forward as the operator runs it in training: its output and the tag of the
    iterations it kept for the backward."""
    weights = (p.detach()[None] for p in layer.parameters())
    return attconv_cpu.attconv_kept(x[None], *weights, layer.kernel_size, layer.stride, layer.iterations,
                                    layer.relu_inside, True)


def weight_gradients(layer: AttConv, x: torch.Tensor, grad: torch.Tensor, tag: torch.Tensor) -> list:
    """The operator's backward of the weights alone, reading the iterations kept under ``tag``
    where they still are."""
    _, *weights = attconv_cpu.attconv_backward(
        grad[None], x[None], *(p.detach()[None] for p in layer.parameters()), tag,
        layer.kernel_size, layer.stride, layer.iterations, layer.relu_inside, False)
    return weights


@pytest.mark.parametrize("threads", [1, 2])
@INKED_SHAPES
def test_the_backward_reads_the_iterations_its_forward_kept_and_they_are_the_ones_it_would_recompute(
        C, H, W, k, s, T, relu, outputs, threads):
    """In training the forward keeps its iterations for the backward, which reads them instead of
    running the forward again: the gradients are bit for bit those recomputed (tag 0), also read a
    second time (the first read frees them: recomputed again), and they are read: given weights
    the forward did not run with, the kept iterations give other gradients than recomputed ones."""
    torch.manual_seed(2)
    layer = AttConv(C, outputs, k, iterations=T, stride=s, relu_inside=relu)
    with torch.no_grad():
        layer.weight_td.add_(0.5 * torch.randn_like(layer.weight_td))
    x = ink(3 * threads + 2, C, H, W)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, tag = kept_forward(layer, x)
        grad = torch.randn_like(out[0])
        assert int(tag) != 0
        recomputed = weight_gradients(layer, x, grad, torch.zeros(1, dtype=torch.int64))
        for read in (weight_gradients(layer, x, grad, tag), weight_gradients(layer, x, grad, tag)):
            assert all(torch.equal(a, b) for a, b in zip(read, recomputed, strict=True))
        _, tag = kept_forward(layer, x)
        with torch.no_grad():
            layer.weight_td.mul_(1.5)
        other = weight_gradients(layer, x, grad, tag)
        fresh = weight_gradients(layer, x, grad, torch.zeros(1, dtype=torch.int64))
        # At one iteration the weights' gradients use nothing kept but the ReLU's mask.
        assert T == 1 or not torch.equal(other[0], fresh[0])
    finally:
        torch.set_num_threads(before)


def test_more_forwards_than_the_kernel_keeps_before_their_backwards_each_get_their_gradients():
    """Ten forwards kept before any backward (the kernel keeps a few: the oldest are taken for the
    newest), then the backwards in reverse order: each gets the gradients of its own forward."""
    torch.manual_seed(3)
    layer = AttConv(1, 6, 5, iterations=3)
    images = [ink(3, 1, 20, 20, seed=seed) for seed in range(10)]
    kept = [kept_forward(layer, x) for x in images]
    for x, (out, tag) in reversed(list(zip(images, kept, strict=True))):
        grad = torch.randn_like(out[0])
        recomputed = weight_gradients(layer, x, grad, torch.zeros(1, dtype=torch.int64))
        assert all(torch.equal(a, b) for a, b in
                   zip(weight_gradients(layer, x, grad, tag), recomputed, strict=True))


@pytest.mark.parametrize("where", ["bias_bu", "gradient", "input"])
def test_a_window_left_out_whose_zeros_would_meet_an_overflow_is_not_left_out(where):
    """The dense equations give a window of zeros 0·x̂ (forward) and 0·W_bu·gy (backward): NaN
    where x̂ or W_bu·gy overflows float32, or is NaN. A huge bias (its x̂ = W_td·b overflows), a
    huge output gradient at empty windows (W_bu·gy overflows there), or huge ink (the agreement
    overflows, the next iteration's outputs are NaN and their NaN predictions reach the zeros the
    inked windows share with empty ones): every output and gradient is finite or not exactly
    where the tensor operations in float32 have it."""
    torch.manual_seed(2)
    layer = AttConv(1, 4, 3, iterations=3)
    x = ink(3, 1, 12, 12, seed=3)
    grad = torch.randn(3, 4, 10, 10)
    with torch.no_grad():
        if where == "bias_bu":
            layer.bias_bu[0] = 1e20
            layer.weight_td[:, 0] = 1e20
        elif where == "gradient":
            layer.weight_bu.mul_(1e10)
            grad[:, :, 0, 0] = 1e30  # a corner: empty in every image here
        else:
            x *= 1e25
    assert x[:, :, :3, :3].eq(0).all()
    got = gradients(layer, x, list(layer.parameters()), grad)
    want = gradients(lambda v: reference(layer, v), x, list(layer.parameters()), grad)
    for name, g, w in zip(["output", "weight_bu", "weight_td", "bias_bu"], [got[0], *got[1]],
                          [want[0], *want[1]], strict=True):
        assert torch.equal(g.isfinite(), w.isfinite()), name
    assert not all(t.isfinite().all() for t in [got[0], *got[1]])


def _poisoned(where: str, value: float, inked: bool = False):
    """A layer, an input (``ink`` if ``inked``) and an output gradient with one entry set to
    ``value`` in ``where``."""
    torch.manual_seed(9)
    layer = AttConv(2, 4, 3, iterations=3)
    with torch.no_grad():
        layer.weight_td.add_(0.5 * torch.randn_like(layer.weight_td))
    x, grad = ink(3, 2, 12, 12) if inked else torch.rand(3, 2, 12, 12), torch.randn(3, 4, 10, 10)
    target = {"input": x, "gradient": grad, **dict(layer.named_parameters())}[where]
    with torch.no_grad():
        target.view(-1)[target.numel() // 3] = value
    return layer, x, grad


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["input", "weight_bu", "weight_td", "bias_bu", "gradient"])
@pytest.mark.parametrize("input_gradient", [True, False], ids=["all windows", "zeros left out"])
def test_nan_and_inf_reach_exactly_what_they_reach_in_the_tensor_operations(where, value, input_gradient):
    """A diverged network is found by its loss not being finite: the kernel must neither drop a
    NaN nor spread one further than the equations do. Compared entry by entry with the tensor
    operations (float64) on the same numbers: which outputs and gradients are finite. Without the
    input's gradient, on images mostly 0, whose empty windows the kernel would leave out."""
    layer, x, grad = _poisoned(where, value, inked=not input_gradient)
    params = list(layer.parameters())
    got = gradients(layer, x.requires_grad_(input_gradient), params, grad)
    exact = layer.double()
    want = gradients(lambda v: reference(exact, v), x.detach().double().requires_grad_(input_gradient),
                     list(exact.parameters()), grad.double())
    names = ["output", *(["x"] if input_gradient else []), "weight_bu", "weight_td", "bias_bu"]
    for name, g, w in zip(names, [got[0], *got[1]], [want[0], *want[1]], strict=True):
        assert torch.equal(g.isfinite(), w.isfinite()), name
        assert torch.equal(g.isnan(), w.isnan()), name
    # The input's gradient, or the output; without the input's gradient, the weights' then.
    reached = (got[1][0] if input_gradient else got[1][1]) if where == "gradient" else got[0]
    assert not reached.isfinite().all()


@pytest.mark.slow
def test_a_network_gone_nan_is_a_failure_with_the_kernel_as_with_the_tensor_operations(monkeypatch):
    """Seed 1's top-down weights hold one NaN from the start: its loss is NaN and it is recorded as
    failed, whichever path AttConv takes; seed 0 trains."""
    from study import loading, train
    from tests.conftest import SMOKE

    def poisoned(*args):
        network = build_network(*args)
        if torch.initial_seed() == 1:  # fit seeds torch with each network's seed before building it
            layer = next(m for m in network.modules() if isinstance(m, AttConv))
            with torch.no_grad():
                layer.weight_td[3, 2] = float("nan")
        return network

    build_network = train.build_network
    monkeypatch.setattr(train, "build_network", poisoned)
    study = loading.load(SMOKE, ["data.n_images=300", "train.epochs=2", "model.attention.layers=[0]"])
    failures = [[n.failure for n in train.fit(study, seeds=[0, 1]).networks]]
    monkeypatch.setattr(attconv_cpu, "available", lambda: False)
    failures.append([n.failure for n in train.fit(study, seeds=[0, 1]).networks])
    for kernel_or_not in failures:
        assert kernel_or_not[0] is None
        assert kernel_or_not[1].startswith("loss not finite at epoch 0 (train nan, val nan)")


def test_the_operator_checks_what_it_is_given():
    x, w, b = torch.rand(1, 2, 1, 8, 8), torch.rand(1, 9, 4), torch.zeros(1, 4)
    with pytest.raises(TypeError, match="float32 tensors on the CPU, got torch.float64"):
        attconv_cpu.attconv(x.double(), w.double(), w.double(), b.double(), 3, 1, 2, False)
    with pytest.raises(ValueError, match="do not fit together"):
        attconv_cpu.attconv(x, torch.rand(1, 8, 4), torch.rand(1, 8, 4), b, 3, 1, 2, False)
    with pytest.raises(ValueError, match="do not fit together"):
        attconv_cpu.attconv(x, w, w, torch.zeros(1, 5), 3, 1, 2, False)
    with pytest.raises(ValueError, match="G×B×C×H×W"):
        attconv_cpu.attconv(x[0], w, w, b, 3, 1, 2, False)
    # Not contiguous is fine: the operator makes it so.
    wide = torch.rand(1, 2, 1, 8, 16)[..., ::2]
    torch.testing.assert_close(attconv_cpu.attconv(wide, w, w, b, 3, 1, 2, False),
                               attconv_cpu.attconv(wide.contiguous(), w, w, b, 3, 1, 2, False))


@pytest.mark.slow
def test_the_kernels_tests_pass_built_with_address_and_undefined_behaviour_sanitizers(tmp_path):
    """Every other test of this file again, in a process whose kernel is built with
    -fsanitize=address,undefined and stops at the first report, its workspaces filled with NaN
    when allocated."""
    import subprocess
    import sys

    compiler = os.environ.get("CC", "cc")
    runtimes = [subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True,
                               text=True).stdout.strip() for name in ("libasan.so", "libubsan.so")]
    if not all(os.path.isabs(r) and os.path.exists(r) for r in runtimes):
        pytest.skip(f"{compiler} has no sanitizer runtimes here")
    env = {**os.environ, "STUDY_CACHE": str(tmp_path),
           "STUDY_KERNEL_CFLAGS": "-fsanitize=address,undefined -fno-sanitize-recover=all "
                                  "-fno-omit-frame-pointer",
           "LD_PRELOAD": ":".join(runtimes),  # Python itself is not built with them
           # Memory from malloc (the kernel's workspaces) filled with NaN: a lane read before it
           # is written spoils the numbers the tests compare.
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:malloc_fill_byte=255:"
                           "max_malloc_fill_size=2147483647",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    check = ("from study.models import attconv_cpu; lib = attconv_cpu._library(); "
             "assert lib is not None and hasattr(lib, '__asan_init') "
             "and hasattr(lib, '__ubsan_handle_add_overflow'), 'not built with the sanitizers'")
    subprocess.run([sys.executable, "-c", check], env=env, check=True)
    # --capture=sys: a sanitizer's report, written to the process's stderr, reaches the message.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
                          __file__, "-k", "not sanitizers and not gone_nan"], env=env, capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
