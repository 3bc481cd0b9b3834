"""The models that `tritonnorm bench --suite models` trains a step of, defined here (no
download), with the norm layers our users swap:

* ``resnet50`` -- torchvision's ResNet-50 layout (bottlenecks 3-4-6-3, BatchNorm2d, ReLU,
  ``out += identity``), 32x3x224x224, in NCHW and channels_last;
* ``sd_down`` -- a Stable-Diffusion UNet down block on 64x64 latents: two ResNet blocks
  (GroupNorm(32) + SiLU + conv, a time-embedding shift, a skip) and a stride-2 conv;
* ``llama`` -- a Llama-style decoder layer: hidden 4096, 32 heads, SwiGLU 11008, pre-norm
  RMSNorm and residual adds, 4096 tokens;
* ``vit_b`` -- a ViT-B encoder block: LayerNorm, attention (12 heads), LayerNorm, MLP, 64x197
  tokens of 768.

Each has a tiny twin for the CPU (the interpreter), with the same structure.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return F.relu(out)


def resnet50(base: int = 64, blocks=(3, 4, 6, 3), classes: int = 1000) -> nn.Module:
    layers, cin = [], base
    for i, n in enumerate(blocks):
        width = base * 2 ** i
        for j in range(n):
            layers.append(Bottleneck(cin, width, 2 if j == 0 and i > 0 else 1))
            cin = 4 * width
    return nn.Sequential(nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(),
                         nn.MaxPool2d(3, 2, 1), *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(cin, classes))


class ResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D without dropout: norm, SiLU, conv, + time shift, twice."""

    def __init__(self, c: int, temb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(32, c), nn.Conv2d(c, c, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, c)
        self.norm2, self.conv2 = nn.GroupNorm(32, c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class DownBlock(nn.Module):
    """Two ResNet blocks, then a stride-2 conv; the time embedding is a fixed input."""

    def __init__(self, c: int, temb: int = 1280):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, temb), ResnetBlock(c, temb)])
        self.downsample = nn.Conv2d(c, c, 3, 2, 1)
        self.temb = nn.Parameter(torch.zeros(1, temb), requires_grad=False)

    def forward(self, x):
        temb = self.temb.expand(x.shape[0], -1)
        for r in self.resnets:
            x = r(x, temb)
        return self.downsample(x)


class LlamaLayer(nn.Module):
    """Pre-norm decoder layer: h = x + attn(rms(x)); out = h + mlp(rms(h))."""

    def __init__(self, d: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.input_layernorm, self.post_attention_layernorm = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.qkv, self.o = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.gate_up, self.down = nn.Linear(d, 2 * hidden, bias=False), nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.input_layernorm(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)
        h = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        gate, up = self.gate_up(self.post_attention_layernorm(h)).chunk(2, dim=-1)
        return h + self.down(F.silu(gate) * up)


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


# name -> (model on a GPU, its input, channels_last layouts; tiny model, its input)
MODELS = {
    "resnet50": (resnet50, (32, 3, 224, 224), ("nchw", "nhwc"),
                 lambda: resnet50(8, (1, 1, 1, 1), 10), (2, 3, 32, 32)),
    "sd_down": (lambda: DownBlock(320), (8, 320, 64, 64), ("nchw",),
                lambda: DownBlock(32, 16), (1, 32, 8, 8)),
    "llama": (lambda: LlamaLayer(4096, 32, 11008), (1, 4096, 4096), ("nchw",),
              lambda: LlamaLayer(64, 2, 96), (1, 8, 64)),
    "vit_b": (lambda: ViTBlock(768, 12), (64, 197, 768), ("nchw",),
              lambda: ViTBlock(64, 2), (2, 5, 64)),
}
