"""AttConv's forward and backward as one CPU kernel per image (``attconv_cpu.c``).

As tensor operations, each step of an iteration streams a tensor k² times the image for the whole
batch through memory, and on a CPU the layer is bound by those passes, compiled or not
(``docs/performance.md``). The kernel cuts one image's windows and runs every iteration on them
while they are in cache; its backward recomputes the forward of the image, so autograd keeps only
the inputs. It is built with the machine's C compiler (``$CC``, else ``cc``) on first use, for this
CPU, into ``$STUDY_CACHE/kernels``; where that fails, ``available()`` is False, one warning says
why, and AttConv runs its tensor operations, which compute the same numbers.

Float32 on the CPU only; CUDA and other dtypes use the tensor operations. The images are split
into as many parts as torch has threads, run side by side (a ctypes call releases the GIL).

Example:
    >>> x, w, b = torch.rand(1, 2, 1, 8, 8), torch.rand(1, 9, 4), torch.zeros(1, 4)
    >>> attconv(x, w, w, b, 3, 1, 2, False).shape if available() else (1, 2, 4, 6, 6)
    torch.Size([1, 2, 4, 6, 6])
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from study.data.dataset import cache_dir
from study.models.windows import sides

SOURCE = Path(__file__).with_suffix(".c")
# -ffast-math lets the compiler reassociate sums and fuse multiply-adds; it is only
# given when compiling, because linking with it would set flush-to-zero for the whole process.
COMPILE = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-c"]
LINK = ["-shared", "-lm"]
log = logging.getLogger(__name__)
_float_p, _int_p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int)


def _machine(compiler: str) -> str:
    """What the build depends on besides the source: the compiler and this CPU's features."""
    flags = ""
    if Path("/proc/cpuinfo").exists():
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("flags", "Features"))), "")
    return f"{compiler} {platform.machine()} {flags}"


def _build(target: Path, compiler: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "attconv.o", Path(tmp) / target.name
        for command in ([compiler, *COMPILE, str(SOURCE), "-o", str(obj)],
                        [compiler, str(obj), "-o", str(lib), *LINK]):
            subprocess.run(command, check=True, capture_output=True, text=True)
        lib.replace(target)  # atomic: trials building at once each publish a whole library


@cache
def _library() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC", "cc")
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(COMPILE + LINK).encode()
                            + _machine(compiler).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"attconv-{digest}.so"
    try:
        if not target.exists():
            _build(target, compiler)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        log.warning("AttConv's CPU kernel could not be built (%s); AttConv runs as tensor "
                    "operations, the same numbers several times slower", detail.strip()[:300])
        return None
    for name, tensors in (("attconv_forward", 5), ("attconv_backward", 9)):
        getattr(library, name).argtypes = [_int_p, ctypes.c_int, *[_float_p] * tensors]
        getattr(library, name).restype = ctypes.c_int
    return library


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the kernel is built (building it if needed): AttConv uses it on CPU float32."""
    return _library() is not None


def _pointer(tensor: Tensor | None):
    return None if tensor is None else ctypes.cast(tensor.data_ptr(), _float_p)


def _parts(images: int) -> list[tuple[int, int]]:
    """The images split into one contiguous range per thread torch may use."""
    count = max(1, min(torch.get_num_threads(), images))
    bounds = [images * n // count for n in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _run(calls: list) -> None:
    """Runs each thunk, on as many threads as torch may use; a kernel that ran out of memory
    raises here."""
    threads = min(torch.get_num_threads(), len(calls))
    if threads == 1:
        codes = [call() for call in calls]
    else:
        with ThreadPoolExecutor(threads) as pool:
            codes = [future.result() for future in [pool.submit(call) for call in calls]]
    if any(codes):
        raise MemoryError("AttConv's CPU kernel could not allocate its scratch memory")


def _dims(x: Tensor, w_bu: Tensor, kernel: int, stride: int, iterations: int, relu: bool):
    _, _, C, H, W = x.shape
    return (ctypes.c_int * 8)(C, H, W, kernel, stride, w_bu.shape[-1], iterations, int(relu))


def _parts_of(x: Tensor, w_bu: Tensor, w_td: Tensor, b_bu: Tensor):
    """For every part of every group: the group, the part's index and images, and the kernel's
    arguments they share (the count of images, then pointers to them and the group's weights)."""
    parts = _parts(x.shape[1])
    for g in range(x.shape[0]):
        for n, (lo, hi) in enumerate(parts):
            yield g, n, slice(lo, hi), (hi - lo, _pointer(x[g, lo:hi]), _pointer(w_bu[g]),
                                        _pointer(w_td[g]), _pointer(b_bu[g]))


@torch.library.custom_op("study::attconv_cpu", mutates_args=(), device_types="cpu")
def attconv(x: Tensor, w_bu: Tensor, w_td: Tensor, b_bu: Tensor, kernel: int, stride: int,
            iterations: int, relu: bool) -> Tensor:
    """AttConv's output, G×B×O×h×w, for G groups of images G×B×C×H×W, each with its own weights
    (G×(C·k²)×O, G×O). A group is a seed of a stack; a single layer is one group."""
    x, w_bu, w_td, b_bu = (t.contiguous() for t in (x, w_bu, w_td, b_bu))
    out = x.new_empty(*x.shape[:2], w_bu.shape[-1], *sides(*x.shape[-2:], kernel, stride))
    dims, library = _dims(x, w_bu, kernel, stride, iterations, relu), _library()
    _run([partial(library.attconv_forward, dims, *shared, _pointer(out[g, images]))
          for g, _, images, shared in _parts_of(x, w_bu, w_td, b_bu)])
    return out


@torch.library.custom_op("study::attconv_cpu_backward", mutates_args=(), device_types="cpu")
def attconv_backward(grad: Tensor, x: Tensor, w_bu: Tensor, w_td: Tensor, b_bu: Tensor,
                     kernel: int, stride: int, iterations: int, relu: bool,
                     input_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``attconv``'s four tensors given its output's; the input's is empty unless
    ``input_grad``."""
    grad, x, w_bu, w_td, b_bu = (t.contiguous() for t in (grad, x, w_bu, w_td, b_bu))
    # Every part adds into weight gradients of its own; they are summed after.
    G, count = x.shape[0], len(_parts(x.shape[1]))
    gw_bu, gw_td = (w.new_zeros(G, count, *w.shape[1:]) for w in (w_bu, w_td))
    gb_bu = b_bu.new_zeros(G, count, b_bu.shape[-1])
    gx = torch.empty_like(x) if input_grad else None
    dims, library = _dims(x, w_bu, kernel, stride, iterations, relu), _library()
    _run([partial(library.attconv_backward, dims, *shared, _pointer(grad[g, images]),
                  _pointer(None if gx is None else gx[g, images]),
                  _pointer(gw_bu[g, n]), _pointer(gw_td[g, n]), _pointer(gb_bu[g, n]))
          for g, n, images, shared in _parts_of(x, w_bu, w_td, b_bu)])
    return (x.new_empty(0) if gx is None else gx), gw_bu.sum(1), gw_td.sum(1), gb_bu.sum(1)


@attconv.register_fake
def _(x, w_bu, w_td, b_bu, kernel, stride, iterations, relu):
    return x.new_empty(*x.shape[:2], w_bu.shape[-1], *sides(*x.shape[-2:], kernel, stride))


@attconv_backward.register_fake
def _(grad, x, w_bu, w_td, b_bu, kernel, stride, iterations, relu, input_grad):
    # Contiguous, as the kernel writes them, whatever the inputs' strides.
    return (x.new_empty(x.shape if input_grad else 0), w_bu.new_empty(w_bu.shape),
            w_td.new_empty(w_td.shape), b_bu.new_empty(b_bu.shape))


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:4])
    ctx.geometry = inputs[4:]


def _backward(ctx, grad: Tensor):
    gx, gw_bu, gw_td, gb_bu = attconv_backward(grad, *ctx.saved_tensors, *ctx.geometry,
                                               ctx.needs_input_grad[0])
    # With one iteration the top-down weights never reach the output: no gradient, as in autograd.
    iterations = ctx.geometry[2]
    return (gx if ctx.needs_input_grad[0] else None, gw_bu, gw_td if iterations > 1 else None,
            gb_bu, None, None, None, None)


attconv.register_autograd(_backward, setup_context=_setup)


@attconv.register_vmap
def _(info, in_dims, x, w_bu, w_td, b_bu, *geometry):
    """Seeds of a stack: with weights of their own, each seed's groups become groups; sharing the
    weights, its images join the batch of each group."""
    size, (x_dim, *weight_dims) = info.batch_size, in_dims[:4]
    if all(d is None for d in weight_dims):
        x = x.movedim(x_dim, 1)  # G×S×B×…: the seeds' images side by side in each group
        out = attconv(x.flatten(1, 2), w_bu, w_td, b_bu, *geometry)
        return out.unflatten(1, x.shape[1:3]), 1

    def per_seed(t: Tensor, dim: int | None) -> Tensor:
        t = t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)
        return t.flatten(0, 1)  # (S·G)×…

    out = attconv(per_seed(x, x_dim), *(per_seed(t, d) for t, d in
                                         zip((w_bu, w_td, b_bu), weight_dims, strict=True)), *geometry)
    return out.unflatten(0, (size, -1)), 0


@register_flop_formula(torch.ops.study.attconv_cpu)
def _(x_shape, w_bu_shape, w_td_shape, b_shape, kernel, stride, iterations, relu, *,
      out_shape) -> int:
    """What the tensor operations' matrix products count: T bottom-up and T − 1 top-down, each
    (C·k²)·O multiply-adds per window."""
    groups, images, outputs, h, w = out_shape
    return (2 * iterations - 1) * 2 * w_bu_shape[-2] * outputs * h * w * images * groups
