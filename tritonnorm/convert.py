"""tritonnorm.convert: swap every torch.nn norm layer of a model for ours, in place."""
import logging
from typing import List, NamedTuple

import torch.nn as nn

from . import hf
from . import modules as ours
from .sync_batchnorm import SyncBatchNorm

log = logging.getLogger("tritonnorm")

SWAPS = {
    nn.BatchNorm1d: ours.BatchNorm1d,
    nn.BatchNorm2d: ours.BatchNorm2d,
    nn.BatchNorm3d: ours.BatchNorm3d,
    nn.InstanceNorm1d: ours.InstanceNorm1d,
    nn.InstanceNorm2d: ours.InstanceNorm2d,
    nn.InstanceNorm3d: ours.InstanceNorm3d,
    nn.LayerNorm: ours.LayerNorm,
    nn.GroupNorm: ours.GroupNorm,
    nn.RMSNorm: ours.RMSNorm,
    nn.SyncBatchNorm: SyncBatchNorm,
}
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class Swap(NamedTuple):
    name: str       # qualified module name ("" for the root)
    before: str     # class name before
    after: str      # class name after, or "left alone (subclass)"


def convert(module: nn.Module, *, sync_batchnorm: bool = False, process_group=None,
            fuse: bool = False, concrete_args=None, return_report: bool = False):
    """Replace every torch.nn norm layer in ``module`` by its tritonnorm twin, in place.

    Each layer keeps its object identity, so its parameters, buffers, device,
    dtype, training flag and hooks stay exactly as they were: our classes
    subclass torch's and differ only in ``forward``, so the swap changes only
    the layer's class.  A user's own subclass of a torch norm is left alone.
    The norm classes of Hugging Face models in ``tritonnorm.hf.KNOWN`` get a
    subclass of their own class with tritonnorm's forward; other modules whose
    class looks like a norm are left alone and named in the report.
    With ``sync_batchnorm=True`` every BatchNorm*D becomes a tritonnorm
    SyncBatchNorm over ``process_group`` instead (new modules sharing the
    parameters and buffers, as torch's convert_sync_batchnorm makes).
    With ``fuse=True`` the swapped model is then traced with torch.fx (``concrete_args``
    as symbolic_trace takes them) and every norm followed only by an activation, or by
    ``+ residual`` then an activation, becomes one fused norm (tritonnorm/fuse.py); the
    result is a new ``torch.fx.GraphModule`` with the original's state_dict keys, whose
    fused norms share the original's parameters and buffers.  A model that does not
    trace is returned swapped but unfused, and the report says why.
    Returns ``module`` (the replacement itself when the root is a norm), or
    ``(module, report)`` with ``return_report=True``; the report is also logged.
    """
    report: List[Swap] = []
    done = set(SWAPS.values())
    if sync_batchnorm:
        module = _to_sync(module, process_group, report)
    for name, m in module.named_modules():
        target = SWAPS.get(type(m))
        if target is not None:
            before = type(m).__name__
            m.__class__ = target
            report.append(Swap(name, f"torch.nn.{before}", f"tritonnorm.{target.__name__}"))
        elif isinstance(m, tuple(SWAPS)) and type(m) not in done:
            report.append(Swap(name, type(m).__qualname__, "left alone (subclass)"))
        elif hf.subclass_for(type(m)) is not None:
            before = hf.qualname(type(m))
            m.__class__ = hf.subclass_for(type(m))
            report.append(Swap(name, before, f"tritonnorm.hf.{type(m).__name__}"))
        elif hf.looks_like_a_norm(m):
            report.append(Swap(name, hf.qualname(type(m)), "left alone (unknown norm class)"))
    if fuse:
        module = _fuse(module, concrete_args, report)
    for swap in report:
        log.info("convert: %s: %s -> %s", swap.name or "<root>", swap.before, swap.after)
    return (module, report) if return_report else module


def _fuse(module: nn.Module, concrete_args, report: List[Swap]) -> nn.Module:
    from .fuse import fuse
    gm, fused, why = fuse(module, concrete_args)
    if gm is None:
        report.append(Swap("", hf.qualname(type(module)),
                           f"not fused: torch.fx could not trace it ({why})"))
        return module
    for name, pattern, epilogue, *why in fused:
        before = f"tritonnorm.{type(gm.get_submodule(name)).__name__} + {pattern}"
        if why:
            report.append(Swap(name, before, f"not fused: {why[0]}"))
            continue
        report.append(Swap(name, before, f"fused: {epilogue}"
                           + (", residual" if pattern != "act" else "")))
    return gm


def _to_sync(module: nn.Module, process_group, report: List[Swap]) -> nn.Module:
    """Every exact BatchNorm*D (torch's or ours) becomes a tritonnorm SyncBatchNorm."""
    sync_from = BATCH_NORMS + tuple(SWAPS[t] for t in BATCH_NORMS)
    if type(module) in sync_from:
        report.append(Swap("", _qualname(module), "tritonnorm.SyncBatchNorm"))
        return SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) in sync_from:
                report.append(Swap(f"{name}.{child_name}".lstrip("."), _qualname(child),
                                   "tritonnorm.SyncBatchNorm"))
                parent.add_module(child_name, SyncBatchNorm.convert_sync_batchnorm(child, process_group))
    return module


def _qualname(m: nn.Module) -> str:
    cls = type(m)
    return f"{'torch.nn' if cls.__module__.startswith('torch') else 'tritonnorm'}.{cls.__name__}"
