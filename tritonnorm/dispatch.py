"""Launch the row-norm kernels for one [N, G, Cg, S] view."""
import numpy as np
import torch
import triton
import triton.language as tl

from . import config
from .kernels import column_sum, row_norm_bwd, row_norm_fwd
from .spec import W_BY_ELEMENT, W_BY_ROW, ReductionSpec, RowView


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation and saved-statistics dtype: fp32, or fp64 for fp64 input."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _tl(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _geometry(view: RowView, cfg: config.RowConfig):
    return (view.G, view.Cg, view.S, view.sN, view.sG, view.sJ, view.sS,
            cfg.n_rb, cfg.nGB, cfg.nSB, cfg.T, cfg.chunk, cfg.SPLIT)


def _blocks(cfg: config.RowConfig):
    return dict(BLOCK_G=cfg.BLOCK_G, BLOCK_J=cfg.BLOCK_J, BLOCK_S=cfg.BLOCK_S,
                BLOCK_SPLIT=triton.next_power_of_2(cfg.SPLIT), num_warps=cfg.num_warps)


def _empty_like_strided(x: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty_strided(x.shape, x.stride(), dtype=dtype or x.dtype, device=x.device)


def row_forward(x, view: RowView, spec: ReductionSpec, weight, bias, eps,
                mean=None, rstd=None, running=None, out_dtype=None):
    """Normalise ``x``.  Returns (y, mean, rstd) with statistics per row.

    With ``mean``/``rstd`` given (shape (G,), one per group, e.g. running
    statistics) the statistics pass is skipped and those are applied.
    ``running`` = (running_mean, running_var, momentum, num_batches_tracked)
    folds the batch statistics into the buffers in place; momentum None means
    the cumulative average 1 / num_batches_tracked, read on the device."""
    acc = acc_dtype(x)
    cfg = config.row_config(view, x)
    y = _empty_like_strided(x, out_dtype)
    fixed = mean is not None
    if not fixed:
        mean = torch.empty(view.rows, dtype=acc, device=x.device)
        rstd = torch.empty(view.rows, dtype=acc, device=x.device)
    part = mean
    if cfg.SPLIT > 1 and not fixed:
        part = torch.empty(view.rows * cfg.SPLIT * 3, dtype=acc, device=x.device)
    phases = [3] if fixed else ([0] if cfg.SPLIT == 1 else [1, 2])
    w = weight if weight is not None else x
    b = bias if bias is not None else x
    rm, rv, momentum, nbt = running if running is not None else (mean, mean, 0.0, mean)
    mom_hi = float(np.float32(momentum or 0.0))
    mom_lo = float(np.float32((momentum or 0.0) - mom_hi))
    for phase in phases:
        grid = (cfg.n_rb, 1 if phase in (0, 3) else cfg.SPLIT)
        row_norm_fwd[grid](
            x, y, w, b, mean, rstd, part, rm, rv, nbt if nbt is not None else mean,
            *_geometry(view, cfg), 0 if fixed else view.G, eps, mom_hi, mom_lo,
            PHASE=phase, CENTER=spec.center, HAS_W=weight is not None,
            HAS_B=bias is not None, W_MODE=spec.w_mode, UPDATE_RUNNING=running is not None,
            CUMULATIVE=momentum is None, ACC=_tl(acc), **_blocks(cfg))
    return y, mean, rstd


def row_backward(x, dy, view: RowView, spec: ReductionSpec, weight, mean, rstd,
                 need_dw: bool, need_db: bool, fixed: bool = False):
    """Gradients (dx, dw, db) of row_forward; dw/db are None unless asked for.

    ``fixed`` marks statistics that are constants (running statistics): then
    dx = w * dy * rstd."""
    acc = acc_dtype(x)
    cfg = config.row_config(view, x)
    cw = weight.numel() if weight is not None else {
        W_BY_ELEMENT: view.Cg, W_BY_ROW: view.G}.get(spec.w_mode, view.G * view.Cg)
    nprog = config.backward_programs(cfg, x, cw)
    need_dwb = need_dw or need_db
    dx = _empty_like_strided(x)
    dwb = (torch.zeros(nprog * cfg.SPLIT * 2 * cw, dtype=acc, device=x.device)
           if need_dwb else rstd)
    phases = [3] if fixed else ([0] if cfg.SPLIT == 1 else [1, 2])
    part = rstd
    if phases == [1, 2]:
        part = torch.empty(view.rows * cfg.SPLIT * 2, dtype=acc, device=x.device)
    w = weight if weight is not None else x
    for phase in phases:
        grid = (nprog, 1 if phase in (0, 3) else cfg.SPLIT)
        row_norm_bwd[grid](
            x, dy, dx, w, mean, rstd, part, dwb, *_geometry(view, cfg),
            0 if fixed else view.G, cw, float(view.Cg * view.S),
            PHASE=phase, CENTER=spec.center, HAS_W=weight is not None,
            NEED_DWB=need_dwb and phase != 1, W_MODE=spec.w_mode, ACC=_tl(acc), **_blocks(cfg))
    dw = db = None
    if need_dwb:
        pdtype = weight.dtype if weight is not None else x.dtype
        sums = column_sums(dwb.view(nprog * cfg.SPLIT, 2 * cw), pdtype)
        dw = sums[:cw] if need_dw else None
        db = sums[cw:] if need_db else None
    return dx, dw, db


def column_sums(partials: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Deterministic sum over axis 0 of a 2-d partials tensor."""
    a, k = partials.shape
    out = torch.empty(k, dtype=out_dtype, device=partials.device)
    block_a, block_k = config.column_sum_blocks(a, k)
    column_sum[(triton.cdiv(k, block_k),)](partials, out, a, k, BLOCK_A=block_a, BLOCK_K=block_k)
    return out
