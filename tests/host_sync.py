"""Spot host synchronisation in tritonnorm's host code.

A CUDA graph cannot capture a copy of device data to the host, and torch.compile
breaks its graph on one.  The ways Python code forces one are the Tensor methods
below; ``host_syncs`` records every call of them made directly from a file of
the tritonnorm package (triton's interpreter makes its own, which do not count)."""
import contextlib
import os
import sys

import torch

import tritonnorm

SYNCING = ["item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"]
PACKAGE = os.path.dirname(tritonnorm.__file__)


@contextlib.contextmanager
def host_syncs():
    """Yields a list that fills with (method, file, line) of each sync from tritonnorm."""
    calls, saved = [], {name: getattr(torch.Tensor, name) for name in SYNCING}

    def spy(name, real):
        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE):
                calls.append((name, caller, sys._getframe(1).f_lineno))
            return real(self, *args, **kwargs)
        return method
    for name, real in saved.items():
        setattr(torch.Tensor, name, spy(name, real))
    try:
        yield calls
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)
