"""The activation epilogue: its names, its kernel codes and its torch composition.

``activation`` is one of "relu", "silu", "gelu" (with torch's ``approximate``: "none"
for the erf form, "tanh") or "leaky_relu" (with ``negative_slope``); the kernels take
it as the ACT constexpr (kernels/activation.py) and the slope as a float.
"""
from typing import NamedTuple, Optional

import torch.nn.functional as F
from torch import Tensor

# The kernels' ACT codes.
RELU, SILU, GELU, GELU_TANH, LEAKY_RELU = 1, 2, 3, 4, 5
NAMES = ("relu", "silu", "gelu", "leaky_relu")


class Act(NamedTuple):
    """A parsed activation: its ACT code and leaky_relu's slope (0 otherwise)."""
    code: int
    slope: float = 0.0

    @property
    def maskable(self) -> bool:
        """Its derivative is a function of sign(z): a saved sign mask replaces z."""
        return self.code in (RELU, LEAKY_RELU)


def parse(activation: Optional[str], negative_slope: float = 0.01,
          approximate: str = "none") -> Optional[Act]:
    """Act of the keywords, or None for no activation; ValueError for an unknown name."""
    if activation is None:
        return None
    if activation not in NAMES:
        raise ValueError(f"activation must be None or one of {', '.join(map(repr, NAMES))}, "
                         f"got {activation!r}")
    if activation == "gelu":
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate argument must be either none or tanh, got {approximate!r}")
        return Act(GELU_TANH if approximate == "tanh" else GELU)
    if activation == "leaky_relu":
        return Act(LEAKY_RELU, float(negative_slope))
    return Act({"relu": RELU, "silu": SILU}[activation])


def describe(activation: Optional[str], negative_slope: float, approximate: str) -> str:
    """The activation as extra_repr shows it ("" for none)."""
    if activation is None:
        return ""
    if activation == "leaky_relu":
        return f"activation='leaky_relu', negative_slope={negative_slope}"
    if activation == "gelu" and approximate != "none":
        return f"activation='gelu', approximate={approximate!r}"
    return f"activation={activation!r}"


def apply(y: Tensor, act: Optional[Act]) -> Tensor:
    """act(y) in torch ops: the composition the kernels match."""
    if act is None:
        return y
    if act.code == RELU:
        return F.relu(y)
    if act.code == SILU:
        return F.silu(y)
    if act.code in (GELU, GELU_TANH):
        return F.gelu(y, approximate="tanh" if act.code == GELU_TANH else "none")
    return F.leaky_relu(y, act.slope)


def outside(x: Tensor, residual: Optional[Tensor]) -> bool:
    """A residual the kernels cannot read as they read x -- another shape (one that
    broadcasts: a time embedding ``emb[:, :, None, None]``, a per-channel parameter, a 0-d
    tensor, or a larger tensor that x broadcasts to), dtype or device: act(norm(x) +
    residual) then runs in torch ops after the kernel (``compose``), with torch's
    broadcasting, type promotion and errors."""
    return residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                     or residual.device != x.device)


def compose(y: Tensor, residual: Optional[Tensor], act: Optional[Act]) -> Tensor:
    """act(y + residual) in torch ops."""
    return apply(y if residual is None else y + residual, act)
