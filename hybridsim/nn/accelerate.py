"""The user options ``amp`` and ``compile``, applied to a correction network only.

``amp=bf16|fp16`` runs the network's forward under ``torch.autocast`` and casts its output back
to the input's dtype, so the solver around it (ODE stages, the ray transform, the pressure
solve) sees and keeps float32/float64 tensors: autocast is entered inside the network's call and
left before the solver's next operation. ``compile=true`` wraps the same forward in
``torch.compile`` (inductor; compiled code is cached in torch's own cache directories,
``TORCHINDUCTOR_CACHE_DIR``, so a second run of the same network compiles faster).

Both patch the network's callables in place (its ``forward``, and a ``GroupedMLP``'s
``kernel``, which its folded-scale path ``scaled()`` calls), so parameter names, checkpoints
and the optimiser's parameter order are unchanged. Choices measured in docs/benchmarks.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hybridsim.schemas import ConfigError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check(amp: str, device: str, dtype: str) -> None:
    """ConfigError (one line naming the key) for a combination that cannot do what it says:
    ``amp=fp16`` on the CPU (refused: float16 autocast is a GPU feature; use bf16 there), or
    any ``amp`` with ``dtype=float64`` (autocast lowers float32 operations only, so it would
    silently do nothing)."""
    if amp not in AMP_DTYPES:
        raise ConfigError(f"amp={amp} is not valid; choose one of: {', '.join(AMP_DTYPES)}")
    if amp == "none":
        return
    if amp == "fp16" and device == "cpu":
        raise ConfigError(
            "amp=fp16 needs a CUDA device (float16 autocast is not offered on the CPU here); "
            "use amp=bf16 or amp=none"
        )
    if dtype != "float32":
        raise ConfigError(
            f"amp={amp} needs dtype=float32 (autocast does not lower {dtype} operations); "
            "set dtype=float32 or amp=none"
        )


def _autocast(fn: Callable, dtype: torch.dtype) -> Callable:
    @functools.wraps(fn)
    def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=dtype):
            y = fn(x, *args, **kwargs)
        return y.to(x.dtype)

    return run


def _wrap(fn: Callable, amp: torch.dtype | None, compile: bool) -> Callable:
    if compile:
        fn = torch.compile(fn, dynamic=None)
    if amp is not None:
        fn = _autocast(fn, amp)
    return fn


def accelerate(net: nn.Module | None, amp: str = "none", compile: bool = False) -> Any:
    """``net`` with its forward (and a GroupedMLP's kernel) under autocast and/or compiled; a
    ``ModuleList`` (one network per iteration) has each of its networks done. Returns ``net``
    (patched in place); ``None`` and ``amp=none, compile=false`` are left as they are."""
    dtype = AMP_DTYPES[amp]
    if net is None or (dtype is None and not compile):
        return net
    if isinstance(net, nn.ModuleList):
        for child in net:
            accelerate(child, amp, compile)
        return net
    if hasattr(net, "kernel"):  # GroupedMLP: forward and scaled() both run the kernel
        net.kernel = _wrap(net.kernel, dtype, compile)
    else:
        net.forward = _wrap(net.forward, dtype, compile)
    return net


def accelerate_model(model: nn.Module, amp: str = "none", compile: bool = False) -> nn.Module:
    """Every correction network in ``model`` (the outermost instances of hybridsim's network
    classes: a Hybrid's correction, each iteration's networks of learned primal-dual, a
    black-box baseline's); the solver's own modules are not touched."""
    if AMP_DTYPES[amp] is None and not compile:
        return model
    from hybridsim.nn import NETWORKS

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, NETWORKS):
                accelerate(child, amp, compile)
            else:
                visit(child)

    if isinstance(model, NETWORKS):
        accelerate(model, amp, compile)
    else:
        visit(model)
    return model
