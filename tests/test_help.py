"""What help() shows: every public layer's constructor with torch's arguments and ours,
and a docstring; every public function a docstring (issue 26)."""
import inspect

import pytest
import torch

import tritonnorm
import tritonnorm.functional as TF


PUBLIC_LAYERS = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d",
                 "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm"]


@pytest.mark.parametrize("name", PUBLIC_LAYERS)
def test_help_shows_torchs_constructor_and_a_docstring(name):
    """help() and inspect.signature show torch's constructor arguments, then ours
    (keyword-only); the docstring says what the layer replaces, its dtypes and errors."""
    cls, theirs = getattr(tritonnorm, name), getattr(torch.nn, name)
    ours = inspect.signature(cls).parameters
    torch_params = [p for p in inspect.signature(theirs.__init__).parameters if p != "self"]
    assert list(ours)[:len(torch_params)] == torch_params
    extra = {"RMSNorm": ["offset"]}.get(name, ["activation", "negative_slope", "approximate"])
    assert list(ours)[len(torch_params):] == extra
    assert all(ours[p].kind is inspect.Parameter.KEYWORD_ONLY for p in extra)
    doc = cls.__doc__ or ""
    assert f"torch.nn.{name}" in doc and "Dtypes" in doc and "exception" in doc


@pytest.mark.parametrize("name", sorted(n for n in dir(TF) if not n.startswith("_")
                                        and inspect.isfunction(getattr(TF, n))
                                        and getattr(TF, n).__module__.startswith("tritonnorm")))
def test_every_public_function_has_a_docstring(name):
    assert (getattr(TF, name).__doc__ or "").strip(), name
