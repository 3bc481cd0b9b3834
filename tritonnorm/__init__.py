"""tritonnorm: Triton kernels for PyTorch's normalization layers.

Set TRITON_INTERPRET=1 before importing to run the kernels on the CPU.
"""
from . import functional
from ._runtime import FallbackWarning
from .convert import convert
from .sync_batchnorm import SyncBatchNorm
from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d,
                      InstanceNorm2d, InstanceNorm3d, LayerNorm, RMSNorm)

__version__ = "0.1.0"
__all__ = ["functional", "convert", "FallbackWarning", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "RMSNorm",
           "SyncBatchNorm"]
