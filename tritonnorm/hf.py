"""Hugging Face ``transformers`` norm classes: an explicit table of the known ones.

``tritonnorm.convert`` gives each known instance a subclass of its own class whose
``forward`` runs tritonnorm's kernels with the class's own numerics, so the layer
keeps its identity, parameters, state_dict keys, attributes and isinstance checks.
Two families of numerics:

* ``cast`` -- Llama, Mistral, Qwen2, Qwen3 (q_norm/k_norm too), Phi-3 and T5:
  normalised in fp32, cast back to the input's dtype, then multiplied by the
  weight (spec RMS_CAST).  Where the weight's dtype differs from the input's,
  their result dtype is torch's promotion of the two, and the class's own forward
  runs.
* ``offset`` -- Gemma, Gemma2, Gemma3: ``(xhat * (1 + w.float())).type_as(x)``,
  rms_norm with offset 1 and the sum taken in fp32.

Classes are matched by module and name, never by guessing from a name; a module
whose class looks like a norm but is not in the table is reported and left alone.
"""
from typing import Dict, Optional

import torch.nn as nn

from . import functional as TF
from .front import norm_rows, torch_path
from .spec import RMS_CAST

# "transformers.models.<model>.modeling_<model>.<Class>" -> (family, eps attribute)
KNOWN: Dict[str, tuple] = {
    **{f"transformers.models.{m}.modeling_{m}.{c}": ("cast", "variance_epsilon")
       for m, c in [("llama", "LlamaRMSNorm"), ("mistral", "MistralRMSNorm"),
                    ("qwen2", "Qwen2RMSNorm"), ("qwen3", "Qwen3RMSNorm"),
                    ("phi3", "Phi3RMSNorm"), ("t5", "T5LayerNorm")]},
    **{f"transformers.models.{m}.modeling_{m}.{c}": ("offset", "eps")
       for m, c in [("gemma", "GemmaRMSNorm"), ("gemma2", "Gemma2RMSNorm"),
                    ("gemma3", "Gemma3RMSNorm")]},
}
_SUBCLASSES: Dict[type, type] = {}


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def _cast_forward(self, hidden_states):
    base = type(self).__mro__[1]
    w = self.weight
    if w.dtype != hidden_states.dtype or torch_path(hidden_states):
        return base.forward(self, hidden_states)
    return norm_rows(RMS_CAST, hidden_states, (w.shape[-1],), w, None, self.variance_epsilon)


def _offset_forward(self, x):
    base = type(self).__mro__[1]
    if torch_path(x):
        return base.forward(self, x)
    return TF.rms_norm(x, (self.weight.shape[-1],), self.weight, self.eps, offset=1.0)


def subclass_for(cls: type) -> Optional[type]:
    """The tritonnorm subclass of a known Hugging Face norm class, or None."""
    known = KNOWN.get(qualname(cls))
    if known is None:
        return None
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        forward = _cast_forward if known[0] == "cast" else _offset_forward
        sub = type(cls.__name__, (cls,), {"forward": forward, "__module__": __name__,
                                           "__doc__": f"{cls.__name__} with tritonnorm's kernels."})
        _SUBCLASSES[cls] = sub
        globals()[cls.__name__] = sub   # pickle finds it as tritonnorm.hf.<name>
    return sub


def __getattr__(name: str):
    """tritonnorm.hf.<Class> of a known class, made on first use: a pickled model
    converted in another process loads."""
    import importlib
    for path in KNOWN:
        module, cls_name = path.rsplit(".", 1)
        if cls_name == name:
            return subclass_for(getattr(importlib.import_module(module), cls_name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def looks_like_a_norm(m: nn.Module) -> bool:
    """An unknown module that a reader would take for a norm: reported, left alone."""
    name = type(m).__name__
    return (name.endswith("Norm")
            and not type(m).__module__.startswith(("torch.", "tritonnorm"))
            and type(m) not in _SUBCLASSES.values())
