"""What every op binding shares: argument diagnosis, the checks the fakes run, and the rule for
skipping the Python autograd kernel.

One way to write a binding (extension-cpp style): the schema lives in C++ (`m.def`), and C++
`TORCH_CHECK`s are the source of every shape and value check. A Python wrapper calls the
op's OpOverload (`.default`: the OpOverloadPacket would resolve the overload in Python on
every call) and adds only what C++ cannot say well, and only when a call fails: a CUDA
tensor (the dispatcher would say "Could not run ... with arguments from the 'CUDA' backend"),
a wrong dtype on a meta tensor, or an argument that is not a tensor at all. So the hot path
pays nothing for it.

No autograd when nothing needs a gradient: every functional op with an autograd formula has a
`*_inference` twin schema, the same C++ kernel registered without `register_autograd`. A
wrapper calls the twin when `needs_grad(...)` is false; a Python autograd kernel in the
dispatch path costs time on every call, even under `no_grad`, and these wrappers run about
twenty times per decode step.

The fakes (`register_fake`, used by torch.compile and meta tensors) reject what the CPU
kernels reject, with the same messages and exception types (RuntimeError; ValueError for a
scalar argument out of range), through the `check_*` helpers below and each binding's shape
checks.
"""
from __future__ import annotations

import torch

F32 = torch.float32
I64 = torch.int64
I8 = torch.int8
BF16 = torch.bfloat16
_DTYPE_NAMES = {torch.float32: "Float (torch.float32)", torch.int64: "Long (torch.int64)",
                torch.int8: "Char (torch.int8)", torch.bfloat16: "BFloat16 (torch.bfloat16)"}

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
    """The error a tensor argument deserves, or None: not a tensor, not on the CPU (meta is
    fine: the fakes run there), or the wrong dtype."""
    if t is None and optional:
        return None
    if not isinstance(t, torch.Tensor):
        what = "a torch.Tensor or None" if optional else "a torch.Tensor"
        return TypeError(f"smallmind::{op}: '{name}' must be {what}, got {type(t).__name__}")
    if t.device.type not in ("cpu", "meta"):
        return RuntimeError(
            f"smallmind::{op}: '{name}' is on {t.device}, but the smallmind ops have CPU kernels "
            f"only; move it to the CPU, or use the op's *_reference in plain PyTorch")
    if t.dtype != dtype:
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


# ---- checks for the fakes (the C++ kernels' checks, in Python) -------------------------------

def check_tensor(op: str, name: str, t, dtype: torch.dtype = F32) -> None:
    problem = tensor_problem(op, name, t, dtype)
    if problem is not None:
        raise problem


def check_dim(op: str, name: str, t: torch.Tensor, dim: int, what: str = "") -> None:
    if t.dim() != dim:
        raise RuntimeError(f"smallmind::{op}: '{name}{what}' must be {dim}-D, got a {t.dim()}-D "
                           f"tensor of shape {list(t.shape)}")


def check_min_dim(op: str, name: str, t: torch.Tensor, dim: int) -> None:
    if t.dim() < dim:
        raise RuntimeError(f"smallmind::{op}: '{name}' must have at least {dim} dimension(s), "
                           f"got shape {list(t.shape)}")


def check_shape(op: str, name: str, t: torch.Tensor, shape) -> None:
    torch._check(tuple(t.shape) == tuple(shape),
                 lambda: f"smallmind::{op}: '{name}' must have shape {list(shape)}, got "
                         f"{list(t.shape)}")


def check_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise RuntimeError(f"smallmind::{op}: '{name}' must be contiguous (row-major), got "
                           f"strides {list(t.stride())}")


def check_out(op: str, t: torch.Tensor, shape) -> None:
    """An out= tensor: CPU float32, contiguous, the expected shape."""
    check_tensor(op, "out", t)
    check_shape(op, "out", t, shape)
    check_contiguous(op, "out", t)


def check_eps(op: str, eps: float) -> None:
    if not (eps >= 0.0 and eps != float("inf")):
        raise ValueError(f"smallmind::{op}: eps must be a finite number >= 0, got {eps}")


def check_q_offset(op: str, q_offset, tq, tk) -> None:
    torch._check_value(tq <= tk and 0 <= q_offset and q_offset <= tk - tq,
                 lambda: f"smallmind::{op}: q_offset must satisfy 0 <= q_offset <= Tk - Tq "
                         f"(query i attends keys 0..q_offset+i), got q_offset = {q_offset}, "
                         f"Tq = {tq}, Tk = {tk}")


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


def check_x_and_bias(op: str, x, w, w_name: str, w_dtype, bias):
    """The fakes' checks of x, the weight and the bias; (N, K)."""
    check_tensor(op, "x", x)
    check_min_dim(op, "x", x, 1)
    check_tensor(op, w_name, w, w_dtype)
    check_dim(op, w_name, w, 2)
    check_contiguous(op, w_name, w)
    N, K = w.shape
    torch._check(x.shape[-1] == K, lambda: f"smallmind::{op}: size mismatch, x.size(-1) = "
                                           f"{x.shape[-1]} but {w_name}.size(1) (K) = {K} "
                                           f"(they must be equal)")
    if bias is not None:
        check_tensor(op, "bias", bias)
        check_shape(op, "bias", bias, (N,))
        check_contiguous(op, "bias", bias)
    return N, K


def grad_x_and_bias(ctx, grad, weight, bias_index):
    """The gradients through x (grad @ the float weight) and the bias (the rows' sum)."""
    grad_x = grad @ weight if ctx.needs_input_grad[0] else None
    grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) \
        if ctx.has_bias and ctx.needs_input_grad[bias_index] else None
    return grad_x, grad_bias
