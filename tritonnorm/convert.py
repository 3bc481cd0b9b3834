"""tritonnorm.convert: swap every torch.nn norm layer of a model for ours, in place."""
import logging
from typing import List, NamedTuple

import torch.nn as nn

from . import modules as ours

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
}


class Swap(NamedTuple):
    name: str       # qualified module name ("" for the root)
    before: str     # class name before
    after: str      # class name after, or "left alone (subclass)"


def convert(module: nn.Module, *, return_report: bool = False):
    """Replace every torch.nn norm layer in ``module`` by its tritonnorm twin, in place.

    Each layer keeps its object identity, so its parameters, buffers, device,
    dtype, training flag and hooks stay exactly as they were: our classes
    subclass torch's and differ only in ``forward``, so the swap changes only
    the layer's class.  A user's own subclass of a torch norm is left alone.
    Returns ``module`` (the replacement itself when the root is a norm), or
    ``(module, report)`` with ``return_report=True``; the report is also logged.
    """
    report: List[Swap] = []
    done = set(SWAPS.values())
    for name, m in module.named_modules():
        target = SWAPS.get(type(m))
        if target is not None:
            before = type(m).__name__
            m.__class__ = target
            report.append(Swap(name, f"torch.nn.{before}", f"tritonnorm.{target.__name__}"))
        elif isinstance(m, tuple(SWAPS)) and type(m) not in done:
            report.append(Swap(name, type(m).__qualname__, "left alone (subclass)"))
    for swap in report:
        log.info("convert: %s: %s -> %s", swap.name or "<root>", swap.before, swap.after)
    return (module, report) if return_report else module
