"""Launch the row-norm kernels for one [N, G, Cg, S] view.

A forward or backward is one of:
  * PHASE 0 -- each program owns whole rows;
  * PHASE 1 then 2 -- rows split over SPLIT programs: partials, then merge + finish;
  * PHASE 3 -- given statistics, elementwise only.
The partial-producing and partial-consuming halves are exposed separately
(``*_partials`` and ``partials=``) so SyncBatchNorm can exchange partials
between ranks in between.
"""
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


def _geometry(view: RowView, cfg: config.RowConfig, n_part: int):
    return (view.G, view.Cg, view.S, view.sN, view.sG, view.sJ, view.sS,
            cfg.n_rb, cfg.nGB, cfg.nSB, cfg.T, cfg.chunk, cfg.SPLIT, n_part)


def _blocks(cfg: config.RowConfig, n_part: int):
    return dict(BLOCK_G=cfg.BLOCK_G, BLOCK_J=cfg.BLOCK_J, BLOCK_S=cfg.BLOCK_S,
                BLOCK_PART=triton.next_power_of_2(n_part), num_warps=cfg.num_warps,
                num_stages=cfg.num_stages)


def _empty_like_strided(x: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty_strided(x.shape, x.stride(), dtype=dtype or x.dtype, device=x.device)


def _fwd(phase, x, y, view, spec, cfg, weight, bias, mean, rstd, part, n_part, eps,
         running=None, fixed=False):
    grid = (config.forward_programs(cfg, x), cfg.SPLIT if phase != 0 else 1)
    rm, rv, momentum, nbt = running[:4] if running is not None else (mean, mean, 0.0, None)
    rm_out, rv_out = running[4:] if running is not None and len(running) > 4 else (rm, rv)
    # Float arguments travel as fp32: momentum goes as hi + lo parts (see the kernel).
    mom_hi = float(np.float32(momentum or 0.0))
    mom_lo = float(np.float32((momentum or 0.0) - mom_hi))
    row_norm_fwd[grid](
        x, y, weight if weight is not None else x, bias if bias is not None else x,
        mean, rstd, part, rm, rv, rm_out, rv_out, nbt if nbt is not None else mean,
        *_geometry(view, cfg, n_part), 0 if fixed else view.G, eps, mom_hi, mom_lo,
        PHASE=phase, CENTER=spec.center, HAS_W=weight is not None, HAS_B=bias is not None,
        W_MODE=spec.w_mode, UPDATE_RUNNING=running is not None and phase != 1,
        CUMULATIVE=momentum is None, RESIDENT=cfg.chunk == 1, ACC=_tl(acc_dtype(x)),
        **_blocks(cfg, n_part))


def forward_partials(x, view: RowView, spec: ReductionSpec) -> torch.Tensor:
    """Per-program (count, mean, M2) of every row: shape (rows, SPLIT, 3)."""
    cfg = config.row_config(view, x, spec, "fwd")
    part = torch.empty(view.rows, cfg.SPLIT, 3, dtype=acc_dtype(x), device=x.device)
    _fwd(1, x, x, view, spec, cfg, None, None, part, part, part, cfg.SPLIT, 0.0)
    return part


def row_forward(x, view: RowView, spec: ReductionSpec, weight, bias, eps,
                mean=None, var=None, running=None, partials=None):
    """Normalise ``x``.  Returns (y, mean, rstd) with statistics per row.

    * ``mean``/``var`` given (shape (G,), e.g. running statistics): applied as
      constants, eps and the rsqrt in the kernel, no statistics pass; the
      returned "rstd" is then ``var`` itself, as row_backward(fixed=True) takes it.
    * ``partials`` given (shape (rows, P, 3)): the statistics are their merge.
    * ``running`` = (running_mean, running_var, momentum, num_batches_tracked
      [, new_running_mean, new_running_var]) folds the batch statistics into the
      running statistics, in place or into the two new tensors; momentum None
      means the cumulative average 1 / num_batches_tracked, read on the device."""
    acc = acc_dtype(x)
    cfg = config.row_config(view, x, spec, "fwd")
    y = _empty_like_strided(x)
    if mean is not None:
        _fwd(3, x, y, view, spec, cfg, weight, bias, mean, var, mean, 1, eps, fixed=True)
        return y, mean, var
    mean = torch.empty(view.rows, dtype=acc, device=x.device)
    rstd = torch.empty(view.rows, dtype=acc, device=x.device)
    if partials is None and cfg.SPLIT == 1:
        _fwd(0, x, y, view, spec, cfg, weight, bias, mean, rstd, mean, 1, eps, running)
        return y, mean, rstd
    if partials is None:
        partials = forward_partials(x, view, spec)
    _fwd(2, x, y, view, spec, cfg, weight, bias, mean, rstd, partials, partials.shape[1], eps,
         running)
    return y, mean, rstd


def _tile_outer(spec: ReductionSpec, cfg: config.RowConfig) -> bool:
    """LayerNorm/RMSNorm rows longer than one tile: the backward's elementwise walk
    runs tiles outside and rows inside, so dw/db stay in registers (row_norm_bwd)."""
    return spec.w_mode == W_BY_ELEMENT and cfg.chunk > 1


def _bwd(phase, x, dy, dx, view, spec, cfg, weight, mean, rstd, part, n_part, dwb, nprog, cw,
         count, fixed=False, eps=0.0):
    grid = (nprog, cfg.SPLIT if phase != 0 else 1)
    row_norm_bwd[grid](
        x, dy, dx, weight if weight is not None else x, mean, rstd, part,
        dwb if dwb is not None else rstd, *_geometry(view, cfg, n_part),
        0 if fixed else view.G, cw, count, eps,
        PHASE=phase, CENTER=spec.center, HAS_W=weight is not None,
        NEED_DWB=dwb is not None and phase != 1, W_MODE=spec.w_mode,
        RESIDENT=cfg.chunk == 1, TILE_OUTER=phase in (2, 3) and _tile_outer(spec, cfg),
        ACC=_tl(acc_dtype(x)), **_blocks(cfg, n_part))


def dwb_slots(view: RowView, spec: ReductionSpec, cfg: config.RowConfig, nprog: int) -> int:
    """Rows of the backward's dw/db scratch: one per program that owns a slot
    (see row_norm_bwd): persistent programs (LayerNorm/RMSNorm), split programs
    (BatchNorm), or samples x split programs (GroupNorm/InstanceNorm)."""
    if spec.w_mode == W_BY_ELEMENT:
        return nprog
    if spec.w_mode == W_BY_ROW:
        return cfg.SPLIT
    return view.N * cfg.SPLIT


def _param_count(view: RowView, spec: ReductionSpec, weight) -> int:
    if weight is not None:
        return weight.numel()
    return {W_BY_ELEMENT: view.Cg, W_BY_ROW: view.G}.get(spec.w_mode, view.G * view.Cg)


def backward_partials(x, dy, view: RowView, spec: ReductionSpec, weight, mean, rstd):
    """Per-program (sum w*dy*xhat, sum w*dy) of every row: shape (rows, SPLIT, 2)."""
    cfg = config.row_config(view, x, spec, "bwd")
    nprog = config.backward_programs(cfg, x, _param_count(view, spec, weight), spec.w_mode)
    part = torch.empty(view.rows, cfg.SPLIT, 2, dtype=acc_dtype(x), device=x.device)
    _bwd(1, x, dy, x, view, spec, cfg, weight, mean, rstd, part, cfg.SPLIT, None, nprog, 1, 1.0)
    return part


def row_backward(x, dy, view: RowView, spec: ReductionSpec, weight, mean, rstd,
                 need_dw: bool, need_db: bool, fixed: bool = False, partials=None,
                 count: float = None, eps: float = 0.0):
    """Gradients (dx, dw, db) of row_forward; dw/db are None unless asked for.

    ``fixed`` marks statistics that are constants (running statistics): then
    ``rstd`` holds the variance, and dx = w * dy * rsqrt(var + eps).  ``partials``
    (rows, P, 2) replaces the local row sums, which are then divided by ``count``
    (default: the row length)."""
    cfg = config.row_config(view, x, spec, "bwd")
    cw = _param_count(view, spec, weight)
    nprog = config.backward_programs(cfg, x, cw, spec.w_mode)
    dx = _empty_like_strided(x)
    dwb = None
    slots = dwb_slots(view, spec, cfg, nprog)
    if need_dw or need_db:
        # Every element is written exactly once by the kernel: no zero fill.
        dwb = torch.empty(slots * 2 * cw, dtype=acc_dtype(x), device=x.device)
    count = float(view.Cg * view.S) if count is None else count
    if fixed:
        _bwd(3, x, dy, dx, view, spec, cfg, weight, mean, rstd, rstd, 1, dwb, nprog, cw, count, True,
             eps)
    elif partials is None and cfg.SPLIT == 1 and not _tile_outer(spec, cfg):
        _bwd(0, x, dy, dx, view, spec, cfg, weight, mean, rstd, rstd, 1, dwb, nprog, cw, count)
    else:
        if partials is None:
            partials = backward_partials(x, dy, view, spec, weight, mean, rstd)
        _bwd(2, x, dy, dx, view, spec, cfg, weight, mean, rstd, partials, partials.shape[1], dwb,
             nprog, cw, count)
    dw = db = None
    if dwb is not None:
        pdtype = weight.dtype if weight is not None else x.dtype
        dw, db = column_sums(dwb.view(slots, 2 * cw), pdtype, cw)
        dw = dw if need_dw else None
        db = db if need_db else None
    return dx, dw, db


def column_sums(partials: torch.Tensor, out_dtype: torch.dtype, k1: int):
    """Deterministic sum over axis 0 of a 2-d partials tensor, as two separate
    tensors: columns [0, k1) and [k1, k) -- no storage shared, so no copy is
    needed where outputs may not alias (custom ops)."""
    a, k = partials.shape
    first = torch.empty(k1, dtype=out_dtype, device=partials.device)
    second = torch.empty(k - k1, dtype=out_dtype, device=partials.device)
    block_a, block_k = config.column_sum_blocks(a, k)
    column_sum[(triton.cdiv(k, block_k),)](partials, first, second, a, k, k1,
                                            BLOCK_A=block_a, BLOCK_K=block_k)
    return first, second
