"""tritonnorm.convert on Hugging Face models: tiny models built from configs (no
download), converted against unconverted -- logits and every gradient -- and each
known norm class against its own forward in bf16, where the casting order shows."""
import copy

import pytest
import torch
import torch.nn as nn

import tritonnorm
from conftest import DEVICE
from tritonnorm import hf

transformers = pytest.importorskip("transformers", reason="transformers: in the test extra")

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY))


def _qwen3():
    return transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**TINY, head_dim=8))


def _gemma2():
    return transformers.Gemma2ForCausalLM(transformers.Gemma2Config(**TINY, head_dim=8))


def _gemma3():
    return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**TINY, head_dim=8))


def _t5_encoder():
    return transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))


# name -> (factory, the norm classes convert must swap, how many of them at least)
MODELS = {
    "llama": (_llama, {"LlamaRMSNorm"}, 5),
    "qwen3": (_qwen3, {"Qwen3RMSNorm"}, 9),     # q_norm and k_norm in each layer too
    "gemma2": (_gemma2, {"Gemma2RMSNorm"}, 9),
    "gemma3": (_gemma3, {"Gemma3RMSNorm"}, 13),
    "t5 encoder": (_t5_encoder, {"T5LayerNorm"}, 5),
}


def _logits(model, ids):
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", MODELS)
def test_converted_model_matches_the_original_in_fp32(name):
    make, classes, count = MODELS[name]
    torch.manual_seed(0)
    ref = make().to(DEVICE).float().eval()   # eval: no dropout (T5 has some)
    with torch.no_grad():   # Gemma's weights start at zero: give every norm a real weight
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = copy.deepcopy(ref)
    _, report = tritonnorm.convert(ours, return_report=True)
    swapped = [s for s in report if s.after.startswith("tritonnorm.hf.")]
    assert {s.before.rsplit(".", 1)[1] for s in swapped} == classes
    assert len(swapped) >= count
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ids = torch.randint(0, 64, (2, 12), device=DEVICE)
    a, b = _logits(ours, ids), _logits(ref, ids)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    a.square().mean().backward()
    b.square().mean().backward()
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("name", MODELS)
def test_each_norm_class_keeps_its_own_casting_order_in_bf16(name):
    """Llama-family: cast xhat to bf16, then times the weight (two roundings); Gemma:
    times (1 + w) in fp32, one rounding; T5 like Llama.  Ours equals the class's own
    forward up to fp32 summation order: nearly all elements bit for bit."""
    make, classes, _ = MODELS[name]
    torch.manual_seed(0)
    model = make()
    norm = next(m for m in model.modules() if type(m).__name__ in classes)
    norm = copy.deepcopy(norm).to(DEVICE, torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn_like(norm.weight) * 0.5 + 1)
    x = torch.randn(16, norm.weight.shape[0], device=DEVICE, dtype=torch.bfloat16) * 3
    ref = norm(x)
    tritonnorm.convert(norm)
    assert type(norm).__module__ == "tritonnorm.hf"
    ours = norm(x)
    assert ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, rtol=1e-2, atol=1e-2)
    assert (ours == ref).float().mean() > 0.97


def test_a_weight_of_another_dtype_runs_the_class_own_forward():
    """Llama's result dtype is then torch's promotion: the class computes it."""
    norm = _llama().model.norm.to(DEVICE)   # fp32 weight
    x = torch.randn(4, 32, device=DEVICE, dtype=torch.bfloat16)
    ref = norm(x)
    tritonnorm.convert(norm)
    assert ref.dtype == torch.float32 and torch.equal(norm(x), ref)


def test_unknown_norm_classes_are_left_alone_and_reported():
    class MyRMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return x * self.weight

    model = nn.Sequential(nn.Linear(8, 8), MyRMSNorm())
    _, report = tritonnorm.convert(model, return_report=True)
    assert type(model[1]) is MyRMSNorm
    assert [(s.name, s.after) for s in report] == [("1", "left alone (unknown norm class)")]


def test_the_known_classes_all_exist_in_transformers():
    """The table names real classes: a rename in transformers shows up here."""
    import importlib
    for path in hf.KNOWN:
        module, cls = path.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), cls), path


def test_a_converted_model_pickles_and_loads_in_a_fresh_process(tmp_path):
    """torch.save of the whole model: the subclasses are found by name on load."""
    import subprocess
    import sys
    model = tritonnorm.convert(_llama().eval())
    torch.save(model, tmp_path / "m.pt")
    code = ("import torch, tritonnorm; m = torch.load(r'%s', weights_only=False); "
            "print(type(m.model.norm).__module__, type(m.model.norm).__name__)" % (tmp_path / "m.pt"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["tritonnorm.hf", "LlamaRMSNorm"], out.stderr[-2000:]
