"""AttConv's forward and backward as one CPU kernel per image (``attconv_cpu.c``).

As tensor operations, each step of an iteration streams a tensor k² times the image for the whole
batch through memory, and on a CPU the layer is bound by those passes, compiled or not
(``docs/performance.md``). The kernel cuts one image's windows and runs every iteration on them
while they are in cache. In training, the forward keeps every iteration's shares and outputs in a
workspace of the kernel's own that its backward reads (recomputing them where another forward has
taken it), so autograd keeps only the inputs and a tag. Where the input's gradient is not wanted,
it leaves out windows whose pixels are all 0 (on composite digits, most of conv1's): the same
numbers to float rounding, for less work. It is built with the machine's C compiler (``$CC``,
else ``cc``) on first use, for this CPU, into ``$STUDY_CACHE/kernels`` (``$STUDY_KERNEL_CFLAGS``
adds flags, e.g. sanitizers); where that fails, ``available()`` is False, one warning says why,
and AttConv runs its tensor operations, which compute the same numbers. ``path()`` names the
path AttConv takes here.

Float32 on the CPU only; CUDA and other dtypes use the tensor operations. Each group's images are
split into as many parts as torch has threads (fewer for fewer images), and the kernel runs the
parts on the OpenMP threads torch uses (``-fopenmp`` links the libgomp torch has loaded): a pool
of its own would compete with torch's threads, which spin for a while after each parallel region.
Where the compiler has no OpenMP, the kernel is built without it and runs on one thread.

Example:
    >>> x, w, b = torch.rand(1, 2, 1, 8, 8), torch.rand(1, 9, 4), torch.zeros(1, 4)
    >>> attconv(x, w, w, b, 3, 1, 2, False).shape if available() else (1, 2, 4, 6, 6)
    torch.Size([1, 2, 4, 6, 6])
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from study.cache import cache_dir
from study.models.windows import sides

SOURCE = Path(__file__).with_suffix(".c")
# The compiler may reassociate sums and fuse multiply-adds (the vector code needs it), but not
# assume finite math: NaN and infinity must propagate as in the tensor operations, which is how a
# diverged network is found. Not -ffast-math: linked, it would also set flush-to-zero for the
# whole process.
COMPILE = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
           "-fassociative-math", "-ffp-contract=fast", "-fPIC", "-c"]
LINK = ["-shared", "-lm"]
OPENMP = ["-fopenmp"]  # given to both steps where the compiler has it
log = logging.getLogger(__name__)
_float_p, _int_p = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_int)
_tag_p = ctypes.POINTER(ctypes.c_longlong)


def _machine(compiler: str) -> str:
    """What the build depends on besides the source: the compiler and this CPU's features."""
    flags = ""
    if Path("/proc/cpuinfo").exists():
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("flags", "Features"))), "")
    return f"{compiler} {platform.machine()} {flags}"


def _flags() -> list[str]:
    return os.environ.get("STUDY_KERNEL_CFLAGS", "").split()


def _build(target: Path, compiler: str) -> None:
    """Builds the library at ``target``, with OpenMP where the compiler has it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "attconv.o", Path(tmp) / target.name
        for threads in (OPENMP, []):
            try:
                for command in ([compiler, *COMPILE, *threads, *_flags(), str(SOURCE), "-o", str(obj)],
                                [compiler, str(obj), "-o", str(lib), *LINK, *threads, *_flags()]):
                    subprocess.run(command, check=True, capture_output=True, text=True)
                break
            except subprocess.CalledProcessError:
                if not threads:
                    raise
                log.warning("the C compiler %s has no OpenMP: AttConv's CPU kernel runs on one thread",
                            compiler)
        lib.replace(target)  # atomic: trials building at once each publish a whole library


@cache
def _library() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC", "cc")
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(COMPILE + LINK + OPENMP + _flags()).encode()
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
    library.attconv_forward.argtypes = [_int_p, *[ctypes.c_int] * 4, *[_float_p] * 5, _tag_p]
    library.attconv_backward.argtypes = [_int_p, *[ctypes.c_int] * 4, *[_float_p] * 9, ctypes.c_longlong]
    for function in (library.attconv_forward, library.attconv_backward):
        function.restype = ctypes.c_int
    return library


def available() -> bool:
    """Whether the kernel is built (building it if needed): AttConv uses it on CPU float32."""
    return _library() is not None


# What ``@torch.compiler.assume_constant_result`` does (a compiled AttConv takes the path chosen
# when it was traced), without the decorator's import of dynamo: a second at the start of every
# process that imports the models (each trial's worker), which a LeNet-5 trial never needs; an
# AttConv one loads dynamo at its first forward anyway (torch's custom operators do).
# tests/models/test_attconv_cpu.py checks it is the decorator's mark and compiles AttConv with
# fullgraph=True.
available._dynamo_marked_constant = True  # type: ignore[attr-defined]


def taken(device: torch.device) -> str:
    """Which AttConv a network on ``device`` runs, as ``trials.parquet``'s ``attconv`` column
    records it: the ``C kernel`` (a CPU where it is built) or ``tensor operations``."""
    return "C kernel" if device.type == "cpu" and available() else "tensor operations"


def path() -> str:
    """The path AttConv takes on this machine's CPU in float32, in words (building the kernel if
    needed): for ``study plan`` and the run's first lines."""
    if available():
        return "AttConv on the CPU: its C kernel"
    return "AttConv on the CPU: tensor operations (no C compiler built the kernel; several times slower)"


def _pointer(tensor: Tensor | None):
    return None if tensor is None else ctypes.cast(tensor.data_ptr(), _float_p)


def _checked(x: Tensor, w_bu: Tensor, w_td: Tensor, b_bu: Tensor, kernel: int, stride: int,
             iterations: int, *more: Tensor) -> list[Tensor]:
    """The tensors, contiguous, after checking what the kernel assumes: float32 on the CPU, and
    shapes that agree (G×B×C×H×W input, G×(C·k²)×O weights, G×O bias, windows that fit)."""
    tensors = [x, w_bu, w_td, b_bu, *more]
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise TypeError(f"study::attconv_cpu takes float32 tensors on the CPU, got {t.dtype} on "
                            f"{t.device}; AttConv runs other dtypes and devices as tensor operations")
    if x.dim() != 5 or w_bu.dim() != 3:
        raise ValueError(f"study::attconv_cpu takes G×B×C×H×W input and G×(C·k²)×O weights, got "
                         f"{tuple(x.shape)} and {tuple(w_bu.shape)}")
    G, _, C, H, W = x.shape
    outputs = w_bu.shape[-1]
    if (w_bu.shape != (G, C * kernel**2, outputs) or w_td.shape != w_bu.shape
            or b_bu.shape != (G, outputs)
            or min(kernel, stride, iterations) < 1 or min(H, W) < kernel):
        raise ValueError(f"study::attconv_cpu: input {tuple(x.shape)}, weights {tuple(w_bu.shape)} and "
                         f"{tuple(w_td.shape)}, bias {tuple(b_bu.shape)}, kernel {kernel}, stride {stride}, "
                         f"{iterations} iterations do not fit together")
    return [t.contiguous() for t in tensors]


def _geometry(x: Tensor, w_bu: Tensor, kernel: int, stride: int, iterations: int,
              relu: bool) -> tuple:
    """The kernel's leading arguments: the shape, the groups, their images, the parts each group's
    images are split into (one per thread torch may use, no more than the images), the threads."""
    G, B, C, H, W = x.shape
    threads = torch.get_num_threads()
    parts = max(1, min(threads, B))
    dims = (ctypes.c_int * 8)(C, H, W, kernel, stride, w_bu.shape[-1], iterations, int(relu))
    return dims, G, B, parts, threads


def _ran(failed: int) -> None:
    if failed:
        raise MemoryError("AttConv's CPU kernel could not allocate its scratch memory")


def attconv(x: Tensor, w_bu: Tensor, w_td: Tensor, b_bu: Tensor, kernel: int, stride: int,
            iterations: int, relu: bool) -> Tensor:
    """AttConv's output, G×B×O×h×w, for G groups of images G×B×C×H×W, each with its own weights
    (G×(C·k²)×O, G×O). A group is a seed of a stack; a single layer is one group. Where a
    backward of the weights alone will follow (training at conv1), the kernel keeps the
    iterations for it."""
    return attconv_kept(x, w_bu, w_td, b_bu, kernel, stride, iterations, relu,
                        _keeps(x, w_bu, w_td, b_bu))[0]


def kept_bytes(x_shape: Sequence[int], outputs: int, kernel: int, stride: int, iterations: int) -> int:
    """Bytes the kernel keeps from a training forward on inputs of ``x_shape`` (…×C×H×W) for its
    backward, at most: every image's slot of T iterations' k² planes of shares and O of outputs,
    each plane the image's windows padded to a whole vector (``LB`` lanes in the C source: 8, or
    16 where the CPU has AVX-512; counted here as 16)."""
    *images, _, height, width = x_shape
    rows, columns = sides(height, width, kernel, stride)
    lanes = -(-rows * columns // 16) * 16
    return math.prod(images) * iterations * (kernel**2 + outputs) * lanes * 4


def _keeps(x: Tensor, *weights: Tensor) -> bool:
    """Whether a backward of the weights alone follows (as far as can be told here: under
    ``vmap`` nothing requires grad until its rule unwraps the tensors)."""
    return torch.is_grad_enabled() and not x.requires_grad and any(w.requires_grad for w in weights)


@torch.library.custom_op("study::attconv_cpu", mutates_args=(), device_types="cpu")
def attconv_kept(x: Tensor, w_bu: Tensor, w_td: Tensor, b_bu: Tensor, kernel: int, stride: int,
                 iterations: int, relu: bool, keep: bool) -> tuple[Tensor, Tensor]:
    """``attconv``'s output and the tag of the iterations the kernel kept for the backward (0 where
    it kept none: not asked to, ``keep`` False, or its workspaces taken)."""
    x, w_bu, w_td, b_bu = _checked(x, w_bu, w_td, b_bu, kernel, stride, iterations)
    out = x.new_empty(*x.shape[:2], w_bu.shape[-1], *sides(*x.shape[-2:], kernel, stride))
    tag = torch.zeros(1, dtype=torch.int64)
    _ran(_library().attconv_forward(*_geometry(x, w_bu, kernel, stride, iterations, relu),
                                    *map(_pointer, (x, w_bu, w_td, b_bu, out)),
                                    ctypes.cast(tag.data_ptr(), _tag_p) if keep else None))
    return out, tag


@torch.library.custom_op("study::attconv_cpu_backward", mutates_args=(), device_types="cpu")
def attconv_backward(grad: Tensor, x: Tensor, w_bu: Tensor, w_td: Tensor, b_bu: Tensor, tag: Tensor,
                     kernel: int, stride: int, iterations: int, relu: bool,
                     input_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``attconv``'s four tensors given its output's; the input's is empty unless
    ``input_grad``. ``tag``: the forward's, whose kept iterations it reads where they still are."""
    x, w_bu, w_td, b_bu, grad = _checked(x, w_bu, w_td, b_bu, kernel, stride, iterations, grad)
    geometry = _geometry(x, w_bu, kernel, stride, iterations, relu)
    if grad.shape != (*x.shape[:2], w_bu.shape[-1], *sides(*x.shape[-2:], kernel, stride)):
        raise ValueError(f"study::attconv_cpu_backward: gradient {tuple(grad.shape)} is not the "
                         "output's shape")
    # Every part adds into weight gradients of its own; they are summed after, in a fixed order.
    G, parts = x.shape[0], geometry[3]
    gw_bu, gw_td = (w.new_zeros(G, parts, *w.shape[1:]) for w in (w_bu, w_td))
    gb_bu = b_bu.new_zeros(G, parts, b_bu.shape[-1])
    gx = torch.empty_like(x) if input_grad else None
    _ran(_library().attconv_backward(*geometry, *map(_pointer, (x, w_bu, w_td, b_bu, grad, gx, gw_bu,
                                                                 gw_td, gb_bu)), int(tag[0])))
    return (x.new_empty(0) if gx is None else gx), gw_bu.sum(1), gw_td.sum(1), gb_bu.sum(1)


@attconv_kept.register_fake
def _(x, w_bu, w_td, b_bu, kernel, stride, iterations, relu, keep):
    return (x.new_empty(*x.shape[:2], w_bu.shape[-1], *sides(*x.shape[-2:], kernel, stride)),
            x.new_empty(1, dtype=torch.int64))


@attconv_backward.register_fake
def _(grad, x, w_bu, w_td, b_bu, tag, kernel, stride, iterations, relu, input_grad):
    # Contiguous, as the kernel writes them, whatever the inputs' strides.
    return (x.new_empty(x.shape if input_grad else 0), w_bu.new_empty(w_bu.shape),
            w_td.new_empty(w_td.shape), b_bu.new_empty(b_bu.shape))


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:4], output[1])
    ctx.geometry = inputs[4:8]


def _backward(ctx, grad: Tensor, _tag_grad: Tensor | None):
    gx, gw_bu, gw_td, gb_bu = attconv_backward(grad, *ctx.saved_tensors, *ctx.geometry,
                                               ctx.needs_input_grad[0])
    # With one iteration the top-down weights never reach the output: no gradient, as in autograd.
    iterations = ctx.geometry[2]
    return (gx if ctx.needs_input_grad[0] else None, gw_bu, gw_td if iterations > 1 else None,
            gb_bu, None, None, None, None, None)


attconv_kept.register_autograd(_backward, setup_context=_setup)


@attconv_kept.register_vmap
def _(info, in_dims, x, w_bu, w_td, b_bu, *geometry):
    """Seeds of a stack: with weights of their own, each seed's groups become groups; sharing the
    weights, its images join the batch of each group."""
    size, (x_dim, *weight_dims) = info.batch_size, in_dims[:4]
    *geometry, keep = geometry
    geometry = (*geometry, keep or _keeps(x, w_bu, w_td, b_bu))
    if all(d is None for d in weight_dims):
        x = x.movedim(x_dim, 1)  # G×S×B×…: the seeds' images side by side in each group
        out, tag = attconv_kept(x.flatten(1, 2), w_bu, w_td, b_bu, *geometry)
        return (out.unflatten(1, x.shape[1:3]), tag), (1, None)

    def per_seed(t: Tensor, dim: int | None) -> Tensor:
        t = t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)
        return t.flatten(0, 1)  # (S·G)×…

    out, tag = attconv_kept(per_seed(x, x_dim), *(per_seed(t, d) for t, d in
                                                   zip((w_bu, w_td, b_bu), weight_dims, strict=True)),
                            *geometry)
    return (out.unflatten(0, (size, -1)), tag), (0, None)  # one tag: the kernel ran once


@register_flop_formula(torch.ops.study.attconv_cpu)
def _(x_shape, w_bu_shape, w_td_shape, b_shape, kernel, stride, iterations, relu, keep, *,
      out_shape) -> int:
    """What the tensor operations' matrix products count: T bottom-up and T − 1 top-down, each
    (C·k²)·O multiply-adds per window."""
    (groups, images, outputs, h, w), _tag = out_shape
    return (2 * iterations - 1) * 2 * w_bu_shape[-2] * outputs * h * w * images * groups
