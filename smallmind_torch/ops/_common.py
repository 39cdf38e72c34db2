"""What every op binding shares: argument diagnosis, the fakes' checks, and the rule for skipping
the Python autograd kernel.

One way to write a binding (extension-cpp style): the schema lives in C++ (`m.def`), and C++
`TORCH_CHECK`s are the source of every check and of its message. A Python wrapper calls the
op's OpOverload (`.default`: the OpOverloadPacket would resolve the overload in Python on
every call) and adds only what C++ cannot say, and only when a call fails: a tensor on another
device such as CUDA (the dispatcher would say "Could not run ... with arguments from the 'CUDA'
backend"), an argument that is not a tensor at all, and a meta tensor of the wrong dtype (no C++
kernel runs on meta). So the hot path pays nothing for it.

No autograd when nothing needs a gradient: every functional op with an autograd formula has a
`*_inference` twin schema, the same C++ kernel registered without `register_autograd`. A
wrapper calls the twin when `needs_grad(...)` is false; a Python autograd kernel in the
dispatch path costs time on every call, even under `no_grad`, and these wrappers run about
twenty times per decode step.

The fakes (`register_fake`, used by torch.compile and meta tensors) compute their outputs'
shapes and dtypes, and refuse what the CPU kernels refuse with `fake_check` /
`fake_tensor`: the same exception type (RuntimeError; ValueError for a scalar argument out of
range) and a message that names only the argument; the kernel's own message says why.
"""
from __future__ import annotations

import math

import torch

F32 = torch.float32
I64 = torch.int64
I8 = torch.int8
U8 = torch.uint8
BF16 = torch.bfloat16
_DTYPE_NAMES = {torch.float32: "Float (torch.float32)", torch.int64: "Long (torch.int64)",
                torch.int8: "Char (torch.int8)", torch.uint8: "Byte (torch.uint8)",
                torch.bfloat16: "BFloat16 (torch.bfloat16)"}

# what a wrapper catches before diagnosing: dispatcher errors (RuntimeError, NotImplementedError
# for a backend without a kernel), and AttributeError / TypeError from a non-tensor argument
CALL_ERRORS = (RuntimeError, NotImplementedError, TypeError, AttributeError)


def needs_grad(*tensors) -> bool:
    """Whether autograd must record this call (grad mode on and a tensor requires grad)."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


def tensor_problem(op: str, name: str, t, dtype: torch.dtype = F32, optional: bool = False):
    """The error a tensor argument deserves that the C++ kernel cannot give, or None: not a
    tensor, on a device other than the CPU (meta is fine: the fakes run there), or a meta tensor
    of the wrong dtype."""
    if t is None and optional:
        return None
    if not isinstance(t, torch.Tensor):
        what = "a torch.Tensor or None" if optional else "a torch.Tensor"
        return TypeError(f"smallmind::{op}: '{name}' must be {what}, got {type(t).__name__}")
    if t.device.type not in ("cpu", "meta"):
        return RuntimeError(
            f"smallmind::{op}: '{name}' is on {t.device}, but the smallmind ops have CPU kernels "
            f"only; move it to the CPU, or use the op's *_reference in plain PyTorch")
    if t.dtype != dtype and t.device.type == "meta":  # on the CPU the kernel says it
        return RuntimeError(f"smallmind::{op}: '{name}' must have dtype {_DTYPE_NAMES[dtype]}, "
                            f"got {t.dtype}")
    return None


def int_problem(op: str, name: str, value):
    """The error an int argument deserves, or None (bool, float, tensors are refused: the
    dispatcher would quietly take True as 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        return TypeError(f"smallmind::{op}: '{name}' must be an int, got {type(value).__name__}")
    return None


def check_int(op: str, name: str, value) -> None:
    """Cold path of a wrapper's `type(value) is int` test (SymInt passes)."""
    problem = int_problem(op, name, value)
    if problem is not None:
        raise problem


def diagnose(op: str, exc: BaseException, tensors=(), longs=(), optional=(), ints=()) -> None:
    """After a failed call: raise a clear error for the first bad argument, chained to the
    original; return (so the caller re-raises `exc`) when every argument looks right, e.g. for
    a shape error, which C++ already names. `tensors` / `longs` / `optional`: (name, value)
    pairs of float32 / int64 / optional float32 tensors; `ints`: (name, value) pairs."""
    for name, t in tensors:
        problem = tensor_problem(op, name, t)
        if problem is not None:
            raise problem from exc
    for name, t in longs:
        problem = tensor_problem(op, name, t, I64)
        if problem is not None:
            raise problem from exc
    for name, t in optional:
        problem = tensor_problem(op, name, t, optional=True)
        if problem is not None:
            raise problem from exc
    for name, value in ints:
        problem = int_problem(op, name, value)
        if problem is not None:
            raise problem from exc


# ---- the fakes' checks ------------------------------------------------------------------------

def fake_check(op: str, what: str, ok, value: bool = False) -> None:
    """A fake's refusal when `ok` is false: a RuntimeError (a ValueError for a scalar argument,
    as TORCH_CHECK_VALUE raises) that names `what` it refuses; the reason is the CPU kernel's to
    say."""
    (torch._check_value if value else torch._check)(
        ok, lambda: f"smallmind::{op}: invalid {what} (the CPU kernel's error says why)")


def fake_tensor(op: str, name: str, t, dtype: torch.dtype = F32, dim=None, min_dim: int = 0,
                contiguous: bool = False) -> None:
    """A tensor argument's device (the CPU, or meta), dtype, number of dims (`dim` exactly, or at
    least `min_dim`) and, if asked, its contiguity."""
    fake_check(op, f"'{name}'", t.device.type in ("cpu", "meta") and t.dtype == dtype
               and (t.dim() == dim if dim is not None else t.dim() >= min_dim)
               and (not contiguous or t.is_contiguous()))


def fake_eps(op: str, eps: float) -> None:
    """LayerNorm's eps: finite and >= 0 (common.h's check_eps)."""
    fake_check(op, "eps", math.isfinite(eps) and eps >= 0.0, value=True)


def fake_q_offset(op: str, q_offset, tq, tk) -> None:
    """The causal offset of a (Tq, Tk) block: 0 <= q_offset <= Tk - Tq (common.h's check_q_offset)."""
    fake_check(op, "q_offset", tq <= tk and 0 <= q_offset and q_offset <= tk - tq, value=True)


def fake_out(op: str, out, shape) -> None:
    """An out= tensor: float32, contiguous, of the result's shape."""
    fake_tensor(op, "out", out, contiguous=True)
    fake_check(op, "'out'", tuple(out.shape) == tuple(shape))


# ---- the linear ops on low-precision weights (_linear_q8, _linear_bf16, _linear_w8a8) ----

def call_lowp(variants, args, out):
    """One call of a low-precision linear op: (autograd op, its no-autograd twin, its
    out-variant) on args = (x, weight..., bias), into `out` when given."""
    op, inference, op_out = variants
    x, bias = args[0], args[-1]
    grad = needs_grad(x, bias)
    if out is None:
        return (op if grad else inference)(*args)
    if grad:  # the out-variant records no gradient: compute with autograd, record the copy
        return out.copy_(op(*args))
    op_out(*args, out=out)
    return out


def fake_x_and_bias(op: str, x, w, w_name: str, w_dtype, bias):
    """The fakes' checks of x, the weight (N, K) and the bias; (N, K)."""
    fake_tensor(op, "x", x, min_dim=1)
    fake_tensor(op, w_name, w, w_dtype, dim=2, contiguous=True)
    N, K = w.shape
    fake_check(op, "sizes", x.shape[-1] == K)
    if bias is not None:
        fake_tensor(op, "bias", bias, dim=1, contiguous=True)
        fake_check(op, "'bias'", bias.shape[0] == N)
    return N, K


def grad_x_and_bias(ctx, grad, weight, bias_index):
    """The gradients through x (grad @ the float weight) and the bias (the rows' sum)."""
    grad_x = grad @ weight if ctx.needs_input_grad[0] else None
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) \
        if ctx.has_bias and ctx.needs_input_grad[bias_index] else None
    return grad_x, grad_bias
