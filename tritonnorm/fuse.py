"""convert(model, fuse=True): norm -> activation chains rewritten into one fused norm.

The model is traced with torch.fx.  A tritonnorm norm whose only user is an activation
(nn.ReLU, nn.SiLU, nn.GELU, nn.LeakyReLU, F.relu/silu/gelu/leaky_relu, torch.relu,
``x.relu()``, in-place forms included) takes it as its epilogue; a BatchNorm,
SyncBatchNorm, GroupNorm or InstanceNorm whose only user is an add whose only user is an
activation -- ``act(bn(x) + y)``, ``out += identity; relu(out)`` -- takes the add as its
residual too.  Each fused norm is a new module of the same class sharing the original's
parameters and buffers, at the same qualified name, so the state_dict keys stay.
"""
import copy
import operator
from typing import List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import hf
from . import modules as ours
from .activation import describe
from .sync_batchnorm import SyncBatchNorm

FUSABLE = (ours.BatchNorm1d, ours.BatchNorm2d, ours.BatchNorm3d, SyncBatchNorm, ours.GroupNorm,
           ours.InstanceNorm1d, ours.InstanceNorm2d, ours.InstanceNorm3d, ours.LayerNorm)
# LayerNorm's residual is added before the norm (forward(x, residual)): not this form.
WITH_RESIDUAL = FUSABLE[:-1]
_RELU = (F.relu, F.relu_, torch.relu, torch.relu_)
_SILU = (F.silu,)
_GELU = (F.gelu,)
_LEAKY = (F.leaky_relu, F.leaky_relu_)
_ADDS = (operator.add, operator.iadd, torch.add)


def _arg(node: fx.Node, i: int, name: str, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def activation_of(node: fx.Node, modules: dict) -> Optional[dict]:
    """The epilogue keywords of an activation node, or None if it is not one we fuse."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) is nn.ReLU:
            return dict(activation="relu")
        if type(m) is nn.SiLU:
            return dict(activation="silu")
        if type(m) is nn.GELU:
            return dict(activation="gelu", approximate=m.approximate)
        if type(m) is nn.LeakyReLU:
            return dict(activation="leaky_relu", negative_slope=m.negative_slope)
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1:
        return dict(activation="relu")
    if node.op != "call_function":
        return None
    if node.target in _RELU:
        return dict(activation="relu")
    if node.target in _SILU:
        return dict(activation="silu")
    if node.target in _GELU:
        approximate = _arg(node, 1, "approximate", "none")
        return dict(activation="gelu", approximate=approximate) if isinstance(approximate, str) else None
    if node.target in _LEAKY:
        slope = _arg(node, 1, "negative_slope", 0.01)
        return dict(activation="leaky_relu", negative_slope=slope) if isinstance(slope, (int, float)) else None
    return None


def _is_add(node: fx.Node) -> bool:
    plain = node.op == "call_function" and node.target in _ADDS and "alpha" not in node.kwargs
    method = node.op == "call_method" and node.target in ("add", "add_") and not node.kwargs
    return (plain or method) and len(node.args) == 2


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with every tritonnorm (and Hugging Face) norm a leaf: their
    forward is a call, not traced into."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, FUSABLE + (ours.RMSNorm,)) or type(m).__module__ == hf.__name__
                or super().is_leaf_module(m, qualname))


def _twin(m: nn.Module, epilogue: dict) -> nn.Module:
    """A new module of m's class sharing its parameters and buffers, with the epilogue."""
    new = copy.copy(m)
    new._parameters = type(m._parameters)(m._parameters)
    new._buffers = type(m._buffers)(m._buffers)
    new._modules = type(m._modules)(m._modules)
    new.activation, new.negative_slope, new.approximate = None, 0.01, "none"
    for key, value in epilogue.items():
        setattr(new, key, value)
    return new


def fuse(model: nn.Module, concrete_args=None) -> Tuple[Optional[fx.GraphModule], List[tuple],
                                                         Optional[str]]:
    """(graph module, [(norm name, pattern, epilogue text)], None), or (None, [], why) when
    the model does not trace."""
    try:
        tracer = _Tracer()
        graph = tracer.trace(model, concrete_args=concrete_args)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as e:   # noqa: BLE001 -- any tracing failure means the plain swap
        first = (str(e).strip().splitlines() or [""])[0]
        return None, [], f"{type(e).__name__}: {first}"[:200]
    modules = dict(gm.named_modules())
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = []
    for node in list(gm.graph.nodes):
        # A norm module called more than once keeps its one class: fused in one place only
        # it would be wrong in the others.
        if (node.op != "call_module" or type(modules.get(node.target)) not in FUSABLE
                or calls[node.target] != 1):
            continue
        norm = modules[node.target]
        if norm.activation is not None or len(node.args) != 1 or node.kwargs:
            continue
        user = _only_user(node)
        if user is None:
            continue
        epilogue = activation_of(user, modules)
        if epilogue is not None and user.args[0] is node:
            dead, pattern = [user], "act"
        elif _is_add(user) and isinstance(norm, WITH_RESIDUAL):
            act = _only_user(user)
            other = user.args[1] if user.args[0] is node else user.args[0]
            epilogue = None if act is None else activation_of(act, modules)
            if (epilogue is None or act.args[0] is not user or not isinstance(other, fx.Node)
                    or other is node):
                continue
            user.prepend(node)   # after the residual is computed: the add's place
            node.kwargs = {"residual": other}
            dead, pattern = [act, user], "add + act"
        else:
            continue
        dead[0].replace_all_uses_with(node)
        for d in dead:
            gm.graph.erase_node(d)
        twin = _twin(norm, epilogue)
        gm.add_submodule(node.target, twin)
        fused.append((node.target, pattern, describe(twin.activation, twin.negative_slope,
                                                     twin.approximate)))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    _keep_state(model, gm)
    gm.recompile()
    gm.training = model.training
    return gm, fused, None


def _keep_state(model: nn.Module, gm: fx.GraphModule) -> None:
    """Modules with parameters or buffers that the trace never called stay in the graph
    module at their names, so the state_dict keys are the original's."""
    for name, m in model.named_modules():
        if not name or not (m._parameters or m._buffers):
            continue
        try:
            gm.get_submodule(name)
        except AttributeError:
            gm.add_submodule(name, m)
