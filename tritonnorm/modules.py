"""Drop-in nn.Module norm layers: torch's classes with a Triton ``forward``.

Constructors, defaults, parameters, buffers, state_dict keys, extra_repr and
isinstance checks are torch's own; only ``forward`` is overridden.
"""
import inspect
import warnings
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from . import activation as activations
from . import functional as TF
from .front import norm_rows
from .spec import LAYER, RMS

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
           "LayerNorm", "RMSNorm"]


def _param(m: nn.Module, name: str):
    """A layer's parameter, read from its parameter dict: nn.Module.__getattr__ costs about
    0.5 us a name on a 2-core host, a tenth of a steady-state call.  Where it is not a plain
    parameter (a parametrization, weight_norm's hook), the attribute."""
    p = m._parameters
    return p[name] if name in p else getattr(m, name)


def _affine(m: nn.Module):
    """(weight, bias) of a layer, read like _param, in one call."""
    p = m._parameters
    if "weight" in p and "bias" in p:
        return p["weight"], p["bias"]
    return _param(m, "weight"), _param(m, "bias")


def _buffer(m: nn.Module, name: str):
    """A layer's buffer (running_mean, ...), read like _param."""
    b = m._buffers
    return b[name] if name in b else getattr(m, name)


def torch_signature(doc: str = "", **extra):
    """Class decorator: help() and inspect.signature show torch's constructor arguments
    (of the torch.nn class the layer subclasses), then ``extra`` as keyword-only ones --
    not the ``*args, **kwargs`` the shared constructor takes them through; ``doc`` (what
    the layers share) is appended to the class docstring."""
    def apply(cls):
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + doc
        base = next(b for b in cls.__mro__[1:] if b.__module__.startswith("torch.nn"))
        sig = inspect.signature(base.__init__)
        params = [p for p in sig.parameters.values() if p.name != "self"]
        params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
                   for k, v in extra.items()]
        cls.__signature__ = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
        return cls
    return apply


EPILOGUE_DEFAULTS = dict(activation=None, negative_slope=0.01, approximate="none")
COMMON_DOC = """
    Dtypes: float32, float16, bfloat16 and float64 input; float16/bfloat16 input with
    float32 parameters (mixed precision); the output has the input's dtype and memory
    format.  Statistics are accumulated in float32 (float64 for float64 input).  Runs
    tritonnorm's Triton kernels on a CUDA tensor (and on the CPU under
    TRITON_INTERPRET=1); elsewhere, or for an empty or complex input, torch's own op, with
    a one-time ``tritonnorm.FallbackWarning``.  Bad input raises torch's exception type.
"""
ACTIVATION_DOC = """
    Beyond torch: ``activation`` (None, "relu", "silu", "gelu" with ``approximate``,
    "leaky_relu" with ``negative_slope``) is applied to the output in the same kernel, and
    ``forward(input, residual=None)`` gives act(norm(input) + residual) -- a residual of
    another shape, dtype or device is added in torch ops, with torch's broadcasting.  An
    unknown activation is a ValueError at construction.
"""


class Activated:
    """The activation epilogue of a norm layer: torch's constructor plus ``activation``
    (None, "relu", "silu", "gelu" with ``approximate``, "leaky_relu" with
    ``negative_slope``), kept as plain attributes -- not in the state_dict, so weights
    load either way -- and shown by extra_repr.  The class attributes are the defaults
    of a layer that convert() swapped in without running this constructor."""
    activation: Optional[str] = None
    negative_slope: float = 0.01
    approximate: str = "none"

    def __init__(self, *args, activation: Optional[str] = None, negative_slope: float = 0.01,
                 approximate: str = "none", **kwargs):
        super().__init__(*args, **kwargs)
        activations.parse(activation, negative_slope, approximate)   # refuse a bad one now
        self.activation, self.negative_slope, self.approximate = (activation, negative_slope,
                                                                  approximate)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        act = activations.describe(self.activation, self.negative_slope, self.approximate)
        return f"{text}, {act}" if act else text

    def act(self):
        """The parsed activation (activation.Act), or None."""
        if self.activation is None:
            return None
        return activations.parse(self.activation, self.negative_slope, self.approximate)

    def epilogue(self) -> dict:
        """The functional API's epilogue keywords."""
        return dict(activation=self.activation, negative_slope=self.negative_slope,
                    approximate=self.approximate)


@torch_signature(COMMON_DOC, **EPILOGUE_DEFAULTS)
class LayerNorm(Activated, nn.LayerNorm):
    """torch.nn.LayerNorm with Triton kernels: y = (x - mean) / sqrt(var + eps) * weight +
    bias over the last ``len(normalized_shape)`` dims of input ``(*, *normalized_shape)``
    (the biased variance, as torch's).  Same arguments, parameters and state_dict.

    Beyond torch: ``activation`` as the CNN norms take it (see GroupNorm), and
    ``forward(input, residual)`` returns ``(y, h)``: h = input + residual (of input's shape),
    y = act(layer_norm(h)), in one kernel each way (vLLM's layer convention).
    """
    def forward(self, input: Tensor, residual: Optional[Tensor] = None):
        """torch's forward, then the activation; with a ``residual``, (y, h) of the fused
        h = input + residual, y = act(layer_norm(h)), as vLLM's layers return them."""
        if residual is not None:
            return TF.add_layer_norm(input, residual, self.normalized_shape, self.weight,
                                     self.bias, self.eps, **self.epilogue())
        if self.activation is None:   # torch's call, the functional layer's front (host time)
            weight, bias = _affine(self)
            return norm_rows(LAYER, input, self.normalized_shape, weight, bias, self.eps)
        return TF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps,
                             **self.epilogue())


@torch_signature(COMMON_DOC, offset=0.0)
class RMSNorm(nn.RMSNorm):
    """torch.nn.RMSNorm with Triton kernels: y = x / sqrt(mean(x^2) + eps) * weight over
    the last ``len(normalized_shape)`` dims of input ``(*, *normalized_shape)``; eps None
    is torch's default, the machine epsilon of the accumulation type.

    Beyond torch: ``offset`` -- y = xhat * (offset + weight), Gemma's RMSNorm with
    offset=1.0, the sum taken in float32 as Gemma takes it.  A layer built with an offset
    starts at an effective scale of 1: its weight is initialised (and reset by
    ``reset_parameters``) to 1 - offset, so Gemma's layer starts at weight 0, as Gemma's
    own does; a loaded checkpoint sets it.  ``forward(x, residual)`` returns ``(y, h)`` as
    LayerNorm's does.
    """
    offset = 0.0

    def __init__(self, *args, offset: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.offset = offset
        if offset:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's: weight 1 -- less the offset, so that offset + weight starts at 1."""
        super().reset_parameters()
        if self.offset and self.weight is not None:
            with torch.no_grad():
                self.weight.fill_(1.0 - self.offset)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return f"{text}, offset={self.offset}" if self.offset else text

    def forward(self, x: Tensor, residual: Optional[Tensor] = None):
        """torch's forward; with a ``residual``, (y, h) as LayerNorm.forward."""
        if residual is not None:
            return TF.add_rms_norm(x, residual, self.normalized_shape, self.weight, self.eps,
                                   offset=self.offset)
        if not self.offset:   # the functional layer's front (host time)
            return norm_rows(RMS, x, self.normalized_shape, _param(self, "weight"), None,
                             self.eps)
        return TF.rms_norm(x, self.normalized_shape, self.weight, self.eps, offset=self.offset)


@torch_signature(COMMON_DOC + ACTIVATION_DOC, **EPILOGUE_DEFAULTS)
class GroupNorm(Activated, nn.GroupNorm):
    """torch.nn.GroupNorm with Triton kernels: input ``(N, C, *)`` normalised over each of
    ``num_groups`` groups of C / num_groups channels (and all positions) per sample, then
    the per-channel affine.  Same arguments, parameters and state_dict.
    """
    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        """act(group_norm(input) + residual)."""
        if self.activation is None and residual is None:   # torch's call (host time)
            weight, bias = _affine(self)
            return TF.group_norm(input, self.num_groups, weight, bias, self.eps)
        return TF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps,
                             residual=residual, **self.epilogue())


def _instance_forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
    """torch's _InstanceNorm.forward, calling tritonnorm's instance_norm; then
    act(y + residual)."""
    self._check_input_dim(input)
    feature_dim = input.dim() - self._get_no_batch_dim()
    if input.size(feature_dim) != self.num_features:
        if self.affine:
            raise ValueError(
                f"expected input's size at dim={feature_dim} to match num_features"
                f" ({self.num_features}), but got: {input.size(feature_dim)}.")
        warnings.warn(
            f"input's size at dim={feature_dim} does not match num_features. "
            "You can silence this warning by not passing in num_features, "
            "which is not used because affine=False", stacklevel=3)
    unbatched = input.dim() == self._get_no_batch_dim()
    x = input.unsqueeze(0) if unbatched else input
    if unbatched and residual is not None:
        residual = residual.unsqueeze(0)
    # The epilogue keywords only when there is one: host time.
    epilogue = {} if self.activation is None and residual is None else dict(
        residual=residual, **self.epilogue())
    y = TF.instance_norm(
        x, self.running_mean, self.running_var, self.weight, self.bias,
        self.training or not self.track_running_stats,
        # torch passes 0.0 for momentum=None: InstanceNorm keeps no cumulative average.
        self.momentum if self.momentum is not None else 0.0, self.eps, **epilogue)
    return y.squeeze(0) if unbatched else y


@torch_signature(COMMON_DOC + ACTIVATION_DOC, **EPILOGUE_DEFAULTS)
class InstanceNorm1d(Activated, nn.InstanceNorm1d):
    """torch.nn.InstanceNorm1d with Triton kernels: input ``(N, C, L) or (C, L)``, each channel of
    each sample normalised over its positions; running statistics and their momentum as
    torch's (``track_running_stats``).  Same arguments, buffers and state_dict.
    """
    forward = _instance_forward


@torch_signature(COMMON_DOC + ACTIVATION_DOC, **EPILOGUE_DEFAULTS)
class InstanceNorm2d(Activated, nn.InstanceNorm2d):
    """torch.nn.InstanceNorm2d with Triton kernels: input ``(N, C, H, W) or (C, H, W)``, each channel of
    each sample normalised over its positions; running statistics and their momentum as
    torch's (``track_running_stats``).  Same arguments, buffers and state_dict.
    """
    forward = _instance_forward


@torch_signature(COMMON_DOC + ACTIVATION_DOC, **EPILOGUE_DEFAULTS)
class InstanceNorm3d(Activated, nn.InstanceNorm3d):
    """torch.nn.InstanceNorm3d with Triton kernels: input ``(N, C, D, H, W) or (C, D, H, W)``, each channel of
    each sample normalised over its positions; running statistics and their momentum as
    torch's (``track_running_stats``).  Same arguments, buffers and state_dict.
    """
    forward = _instance_forward


def batch_step(self):
    """torch's _BatchNorm bookkeeping for one forward: counts the batch and
    returns (momentum, num_batches_tracked or None, use batch stats, running_mean,
    running_var).  With momentum=None, momentum comes back None with the
    counter, so the kernel forms 1 / num_batches_tracked on the device."""
    momentum = 0.0 if self.momentum is None else self.momentum
    tracked = None
    running_mean, running_var = _buffer(self, "running_mean"), _buffer(self, "running_var")
    if self.training and self.track_running_stats:
        counter = _buffer(self, "num_batches_tracked")
        if counter is not None:
            counter.add_(1)
            if self.momentum is None:
                momentum, tracked = None, counter
    bn_training = self.training or (running_mean is None and running_var is None)
    use_buffers = not self.training or self.track_running_stats
    return (momentum, tracked, bn_training, running_mean if use_buffers else None,
            running_var if use_buffers else None)


def _batch_forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
    """torch's _BatchNorm.forward, calling tritonnorm's batch_norm; then
    act(y + residual)."""
    self._check_input_dim(input)
    momentum, tracked, bn_training, running_mean, running_var = batch_step(self)
    weight, bias = _affine(self)
    return TF.batch_norm_tracked(input, running_mean, running_var, weight, bias, bn_training,
                                 momentum, self.eps, tracked, self.act(), residual)


@torch_signature(COMMON_DOC + ACTIVATION_DOC, **EPILOGUE_DEFAULTS)
class BatchNorm1d(Activated, nn.BatchNorm1d):
    """torch.nn.BatchNorm1d with Triton kernels: input ``(N, C) or (N, C, L)``, each channel
    normalised over the batch and positions in training (the running statistics updated in
    the kernel, with torch's momentum and unbiased variance; ``momentum=None`` the
    cumulative average), by the running statistics in eval.  Same arguments, buffers and
    state_dict.
    """
    forward = _batch_forward


@torch_signature(COMMON_DOC + ACTIVATION_DOC, **EPILOGUE_DEFAULTS)
class BatchNorm2d(Activated, nn.BatchNorm2d):
    """torch.nn.BatchNorm2d with Triton kernels: input ``(N, C, H, W)``, each channel
    normalised over the batch and positions in training (the running statistics updated in
    the kernel, with torch's momentum and unbiased variance; ``momentum=None`` the
    cumulative average), by the running statistics in eval.  Same arguments, buffers and
    state_dict.
    """
    forward = _batch_forward


@torch_signature(COMMON_DOC + ACTIVATION_DOC, **EPILOGUE_DEFAULTS)
class BatchNorm3d(Activated, nn.BatchNorm3d):
    """torch.nn.BatchNorm3d with Triton kernels: input ``(N, C, D, H, W)``, each channel
    normalised over the batch and positions in training (the running statistics updated in
    the kernel, with torch's momentum and unbiased variance; ``momentum=None`` the
    cumulative average), by the running statistics in eval.  Same arguments, buffers and
    state_dict.
    """
    forward = _batch_forward
