"""Model-level benchmark: one training step (forward, backward, SGD step) of three
small models whose norm layers are ones our users swap:

* ``resnet`` -- a ResNet-style CNN: conv, BatchNorm2d, ReLU, basic blocks;
* ``unet``   -- a UNet/diffusion residual block: GroupNorm(32) + SiLU + conv, twice;
* ``vit``    -- a ViT encoder block: LayerNorm, attention, LayerNorm, MLP.

Providers: torch eager, torch.compile, the model after ``tritonnorm.convert``
(eager), the model after ``tritonnorm.convert(fuse=True)`` (each norm -> activation,
and BatchNorm + residual -> ReLU, one kernel), and both converted models under
torch.compile.  Without a GPU the inputs
are tiny, the kernels run under Triton's interpreter, torch.compile is skipped,
and the numbers are CPU numbers, not GPU numbers.
"""
import copy
import csv
import datetime
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton

import tritonnorm

from .bench import _timer

COLUMNS = ["gpu", "torch", "triton", "timestamp", "model", "input", "dtype", "provider",
           "ms_median", "ms_q20", "ms_q80", "speedup_vs_torch"]


class BasicBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def resnet(w: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        BasicBlock(w), BasicBlock(w),
        nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        BasicBlock(2 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, 10))


class UNetBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(32, c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(32, c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class ViTBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


# name -> (model on a GPU, its input; tiny model for the CPU, its input)
MODELS = {
    "resnet": (lambda: resnet(64), (32, 3, 224, 224), lambda: resnet(8), (2, 3, 16, 16)),
    "unet": (lambda: UNetBlock(320), (8, 320, 64, 64), lambda: UNetBlock(32), (1, 32, 6, 6)),
    "vit": (lambda: ViTBlock(768, 12), (64, 197, 768), lambda: ViTBlock(64, 2), (2, 5, 64)),
}


def _variants(model: nn.Module, on_gpu: bool):
    """provider -> a fresh copy of ``model`` as that provider runs it."""
    out = {"torch": copy.deepcopy(model), "tritonnorm": tritonnorm.convert(copy.deepcopy(model)),
           "tritonnorm fuse": tritonnorm.convert(copy.deepcopy(model), fuse=True)}
    if on_gpu:
        out["torch.compile"] = torch.compile(copy.deepcopy(model))
        out["tritonnorm+compile"] = torch.compile(tritonnorm.convert(copy.deepcopy(model)))
        out["tritonnorm fuse+compile"] = torch.compile(
            tritonnorm.convert(copy.deepcopy(model), fuse=True))
    return out


def _train_step(model: nn.Module, x: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()
        opt.step()
    return step


def run_models(dtypes, out_dir="perf/out", names=None, tiny=None) -> Path:
    """Time a training step of each model; ``tiny`` (default: no GPU) takes the tiny ones."""
    on_gpu = torch.cuda.is_available()
    tiny = not on_gpu if tiny is None else tiny
    device = "cuda" if on_gpu else "cpu"
    where = torch.cuda.get_device_name() if on_gpu else "CPU (Triton interpreter)"
    if not on_gpu:
        print("No GPU: tiny models under Triton's interpreter, no torch.compile. These are CPU "
              "numbers, NOT GPU numbers; quote none of them.")
    timer = _timer(on_gpu)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(gpu=where, torch=torch.__version__, triton=triton.__version__, timestamp=stamp)
    rows = []
    for name in names or MODELS:
        big, big_in, tiny_model, tiny_in = MODELS[name]
        shape = tiny_in if tiny else big_in
        for dtype in dtypes:
            torch.manual_seed(0)
            model = (tiny_model if tiny else big)().to(device, dtype)
            x = torch.randn(shape, device=device, dtype=dtype)
            base = None
            for provider, m in _variants(model, on_gpu).items():
                torch._dynamo.reset()
                try:
                    ms, lo, hi = timer(_train_step(m, x))
                except Exception as e:  # one provider failing must not end the run
                    print(f"{name} {dtype} {provider}: {type(e).__name__}: {e}")
                    continue
                base = ms if provider == "torch" else base
                rows.append(dict(meta, model=name, input="x".join(map(str, shape)),
                                 dtype=str(dtype).replace("torch.", ""), provider=provider,
                                 ms_median=f"{ms:.4f}", ms_q20=f"{lo:.4f}", ms_q80=f"{hi:.4f}",
                                 speedup_vs_torch=f"{base / ms:.3f}" if base else ""))
                print(f"{name:<8}{str(dtype)[6:]:<10}{provider:<20}{ms:10.3f} ms")
            path = _write(rows, Path(out_dir))  # after each model: a cut-off run keeps its rows
    print(models_table(rows))
    return path


def _write(rows, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "models.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (out / "models.md").write_text(models_table(rows) + "\n")
    return out / "models.csv"


def models_table(rows) -> str:
    """Markdown: ms per training step for each provider, per model and dtype."""
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    lines = ["| model | input | dtype | " + " | ".join(f"{p} ms" for p in provs) + " |",
             "|---|---|---|" + "---|" * len(provs)]
    for key in dict.fromkeys((r["model"], r["input"], r["dtype"]) for r in rows):
        ms = {r["provider"]: r["ms_median"] for r in rows if (r["model"], r["input"], r["dtype"]) == key}
        lines.append("| " + " | ".join(key) + " | " + " | ".join(ms.get(p, "-") for p in provs) + " |")
    return "\n".join(lines)
