"""convert(model, fuse=True): norm -> activation chains rewritten into one fused norm.

The model is traced with torch.fx.  A tritonnorm norm whose only user is an activation
(nn.ReLU, nn.SiLU, nn.GELU, nn.LeakyReLU, F.relu/silu/gelu/leaky_relu, torch.relu,
``x.relu()``, in-place forms included) takes it as its epilogue; a BatchNorm,
SyncBatchNorm, GroupNorm or InstanceNorm whose only user is an add whose only user is an
activation -- ``act(bn(x) + y)``, ``out += identity; relu(out)`` -- takes the add as its
residual too.  Each fused norm is a new module of the same class sharing the original's
parameters and buffers, at the same qualified name, so the state_dict keys stay.

What makes the add legal to fuse (each checked, or the add is left alone and the report
says why):

* the residual may have any shape, dtype and device: the fused module's call falls back
  to torch ops for the add and activation where it differs from x's (functional._epilogue),
  so a broadcast operand -- a time embedding ``emb[:, :, None, None]``, a per-channel
  parameter, a 0-d buffer, an x smaller than y -- gives torch's result;
* the norm moves from its own place to the add's, so nothing between the two may mutate
  anything or hold state: no in-place op (``inplace=True``, ``relu_``, ``+=``, setitem, a
  method ending in ``_``), no impure call, no call of a module with buffers or
  ``inplace=True``.  Any of them could change the norm's input (or an alias of it) or see
  the norm's running statistics out of order.
"""
import inspect
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


# In-place operator functions (``out += r``): they mutate their first operand.
_INPLACE_OPS = {getattr(operator, n) for n in (
    "iadd", "iand", "iconcat", "ifloordiv", "ilshift", "imatmul", "imod", "imul", "ior", "ipow",
    "irshift", "isub", "itruediv", "ixor", "setitem", "delitem")}


def _inplace_keyword(target, args, kwargs) -> bool:
    """True when a call binds ``inplace=True`` (keyword or positional, as F.relu(x, True))."""
    if kwargs.get("inplace") is True:
        return True
    try:
        bound = inspect.signature(target).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):   # builtins without a signature; a call fx would refuse
        return False
    return bound.arguments.get("inplace") is True


# Norm layers (torch's and ours, which subclass them): their forward's one side effect is
# the update of their own running statistics.
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def _storages(m: nn.Module) -> set:
    return {b.untyped_storage().data_ptr() for b in m.buffers()}


def side_effect(n: fx.Node, modules: dict, moved: nn.Module) -> Optional[str]:
    """Why moving module ``moved``'s call past node ``n`` may change a result, or None: ``n``
    mutates a tensor (in place), is impure, or calls a module with state -- other than a
    norm layer whose buffers share no storage with ``moved``'s (a ResNet shortcut's
    BatchNorm between the block's last norm and its add): such a call changes only its own
    running statistics, which the moved norm neither reads nor writes."""
    if n.op == "call_module":
        m = modules.get(n.target)
        if getattr(m, "inplace", False) is True:
            return f"in-place module {n.target}"
        if m is not None and next(m.buffers(), None) is not None:
            mine = _storages(moved)
            if not (isinstance(m, _NORM_LAYERS) and not (_storages(m) & mine) and 0 not in mine):
                return f"a call of {n.target}, a module with state (buffers)"
        return "an impure call" if n.is_impure() else None
    if n.op == "call_method":
        name = str(n.target)
        if name in ("__setitem__", "__delitem__") or (name.endswith("_") and not name.endswith("__")):
            return f"in-place method .{name}()"
        return "an impure call" if n.is_impure() else None
    if n.op == "call_function":
        name = getattr(n.target, "__name__", str(n.target))
        if n.target in _INPLACE_OPS or (name.endswith("_") and not name.endswith("__")):
            return f"in-place {name}"
        if _inplace_keyword(n.target, n.args, n.kwargs):
            return f"{name}(inplace=True)"
        return "an impure call" if n.is_impure() else None
    return None


def _between(first: fx.Node, last: fx.Node, modules: dict) -> Optional[str]:
    """Why ``first`` (a norm's call) may not move to ``last``'s place: the first side effect
    between them."""
    n = first.next
    while n is not last:
        why = side_effect(n, modules, modules[first.target])
        if why is not None:
            return f"{why} runs between the norm and the add"
        n = n.next
    return None


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
    the model does not trace.  A pattern that was found but may not be fused comes as
    (norm name, pattern, None, why it was refused)."""
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
            why = _between(node, user, modules)
            if why is not None:
                fused.append((node.target, "add + act", None, why))
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
