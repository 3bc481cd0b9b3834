"""Launch the row-norm kernels for one [N, G, Cg, S] view.

A forward or backward is one of:
  * PHASE 0 -- each program owns whole rows;
  * PHASE 1 then 2 -- rows split over SPLIT programs: partials, then merge + finish;
  * PHASE 3 -- given statistics, elementwise only.
The partial-producing and partial-consuming halves are exposed separately
(``*_partials`` and ``partials=``) so SyncBatchNorm can exchange partials
between ranks in between.

Host cost: everything a launch needs that depends only on (view, dtype, device,
norm, flags) -- the config, the grid, the runtime ints and the constexprs -- is a
``Launch`` built once and memoised (config.memo), so a steady-state call is a
dict lookup, the allocation of its outputs and the launch.
"""
from typing import NamedTuple, Optional

import torch

from . import config
from .kernels import column_sum, row_norm_bwd, row_norm_fwd
from ._runtime import target_programs
from .launch import launcher
from .plan import (W_BY_CHANNEL_ONE_BLOCK, Launch, acc_dtype, blocks, bwd_pointers, cdiv,
                   dwb_slots, fwd_pointers, geometry, kept, make_launch, p2, param_count,
                   scalars, tl_acc, w_mode)
from .spec import W_BY_ELEMENT, W_BY_ROW, ReductionSpec, RowView, kernel_view, new_output, rows_strided


# Module globals, so the CPU host bench can stub them (bench_host).
_run_fwd, _run_bwd, _run_column_sum = (launcher(k) for k in (row_norm_fwd, row_norm_bwd, column_sum))


# Running-statistics update of a forward: none, with a momentum, or the cumulative average.
NO_RUNNING, MOMENTUM, CUMULATIVE = 0, 1, 2
_FWD = config.memo()
_BWD = config.memo()
_COLSUM = config.memo()
# The kernels' QUANT constexpr per output dtype.
QUANT_KIND = {torch.int8: 1, torch.float8_e4m3fn: 2}


def _fwd_launch(phase, x, view, spec, has_w, has_b, running, n_part, has_res=False,
                quant=0, dynamic=False, epi=(0, False, False)) -> Launch:
    """``epi`` = (ACT, ADD_Y, MASK): the activation and residual epilogue.  Keyed on the
    caller's view; the kernels walk its kernel_view."""
    # get_device(): an int, cheaper than x.device (the dtype and view tell CPU from GPU apart
    # only together with it: -1 is the CPU under the interpreter).
    key = (phase, view, x.dtype, x.get_device(), spec, has_w, has_b, running, n_part, has_res,
           quant, dynamic, epi)
    hit = _FWD.get(key)
    if hit is not None:
        return hit
    view = kernel_view(view, spec, x.element_size())
    if phase == 2:   # a statistics row merges the partials of each of its rows
        n_part *= view.stat_rows
    cfg = config.row_config(view, x, spec, "quant" if quant else "fwd")
    grid = (config.forward_programs(cfg, x), cfg.SPLIT if phase != 0 else 1)
    consts = dict(PHASE=phase, CENTER=spec.center, HAS_W=has_w, HAS_B=has_b,
                  W_MODE=w_mode(view, spec),
                  UPDATE_RUNNING=running != NO_RUNNING and phase != 1,
                  CUMULATIVE=running == CUMULATIVE, RESIDENT=cfg.chunk == 1, HAS_RES=has_res,
                  CAST_XHAT=spec.cast_xhat, QUANT=quant, DYNAMIC=dynamic,
                  Y_STRIDED=rows_strided(view, spec), ACT=epi[0], ADD_Y=epi[1], MASK=epi[2],
                  ACC=tl_acc(acc_dtype(x)),
                  **blocks(view, cfg, n_part, x.element_size(), False, epi[1] and phase == 2))
    # (stat_sN, n_stats): the saved statistics' per-sample stride and count (kernels)
    ints = geometry(view, spec, cfg, n_part) + ((0, 0) if phase == 3 else (view.G, view.stat_count))
    return config.remember(_FWD, key, make_launch(row_norm_fwd, grid, ints, consts, cfg,
                                                  fwd_pointers, view, spec))


_NO_EPI = (0, False, False)


def _epi(act, post, mask) -> tuple:
    """The (ACT, ADD_Y, MASK) constexprs of an epilogue (see row_forward)."""
    return (0 if act is None else act.code, post is not None, mask is not None)


def _fwd(L: Launch, x, y, weight, bias, mean, rstd, part, eps, running=None, residual=None,
         h=None, scale=None, act=None, mask=None):
    if running is None:   # pointers the launch does not use go as None (plan.kept)
        rm = rv = rm_out = rv_out = nbt = momentum = None
    else:
        rm, rv, momentum, nbt = running[:4]
        rm_out, rv_out = running[4:] if len(running) > 4 else (rm, rv)
    _run_fwd(L.compiled, kept(L, (x, y, weight, bias, mean, rstd, part, rm, rv, rm_out, rv_out,
                                  nbt, residual, h, scale, mask)),
             scalars(L, (eps, momentum, None if act is None else act.slope)), L.grid, L.opts)


def _running_kind(running) -> int:
    if running is None:
        return NO_RUNNING
    return CUMULATIVE if running[2] is None else MOMENTUM


def forward_partials(x, view: RowView, spec: ReductionSpec, residual=None, h=None) -> torch.Tensor:
    """Per-program (count, mean, M2) of every row: shape (rows, SPLIT, 3).  With a
    ``residual``, of the rows of h = x + residual, which are written to ``h``."""
    split = config.row_config(kernel_view(view, spec, x.element_size()), x, spec, "fwd").SPLIT
    L = _fwd_launch(1, x, view, spec, False, False, NO_RUNNING, split, residual is not None)
    part = torch.empty(L.rows, split, 3, dtype=acc_dtype(x), device=x.device)
    _fwd(L, x, x, None, None, part, part, part, 0.0, None, residual, h)
    return part


def _out(L: Launch, x, dtype=None):
    """y (or dx) for x under plan L (spec.new_output)."""
    return new_output(x, L.dense_out, dtype)


class Plain(NamedTuple):
    """A forward that is one launch and nothing else (plain_launch): its plan and every
    scalar argument of the launch."""
    L: Launch
    scalars: tuple


def plain_launch(x, view: RowView, spec: ReductionSpec, has_w: bool, has_b: bool, eps,
                 act=None) -> Optional[Plain]:
    """The launch of a forward that is one launch and nothing else -- its statistics
    computed, no running statistics, residual or quantized output, rows not split -- for a
    caller to memoise with its own checks (front.norm_rows) and run with run_plain; None
    where the forward is more than that."""
    L = _fwd_launch(0, x, view, spec, has_w, has_b, NO_RUNNING, 1,
                    epi=_NO_EPI if act is None else _epi(act, None, None))
    if not L.whole_rows:
        return None
    return Plain(L, scalars(L, (eps, None, None if act is None else act.slope)))


def run_plain(plan: Plain, x, weight, bias):
    """row_forward(x, ..., weight, bias, eps, act=act) of a plain_launch ``plan``: (y, stats).
    Its pointers are x, y, weight and bias where given (HAS_W, HAS_B), the statistics and
    nothing else (plan.fwd_pointers): no plan.kept to pass through."""
    L = plan.L
    y = _out(L, x)
    stats = x.new_empty(2 * L.n_stats,
                        dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    _run_fwd(L.compiled, (x, y, weight, bias, stats, None, None, None, None, None, None, None,
                          None, None, None, None), plan.scalars, L.grid, L.opts)
    return y, stats


def mean_rstd(stats):
    """(mean, rstd), each of rows, of row_forward's ``stats``: views."""
    return stats.view(2, -1).unbind(0)


def row_forward(x, view: RowView, spec: ReductionSpec, weight, bias, eps,
                mean=None, var=None, running=None, partials=None, residual=None, h=None,
                quant=None, act=None, post=None, mask=None):
    """Normalise ``x``.  Returns (y, stats): ``stats`` the statistics of every row, one
    tensor of 2 * rows -- the means, then the rstds (1 / sqrt(var + eps)) -- in fp32 (fp64
    for fp64 x): one allocation a call (kernels/row_norm.py, Mean_ptr; mean_rstd splits it).

    * ``mean``/``var`` given (shape (G,), e.g. running statistics): applied as
      constants, eps and the rsqrt in the kernel, no statistics pass; ``stats`` is then
      (mean, var) itself, as row_backward(fixed=True) takes it.
    * ``partials`` given (shape (rows, P, 3)): the statistics are their merge.
    * ``running`` = (running_mean, running_var, momentum, num_batches_tracked
      [, new_running_mean, new_running_var]) folds the batch statistics into the
      running statistics, in place or into the two new tensors; momentum None
      means the cumulative average 1 / num_batches_tracked, read on the device.
    * ``residual`` (x's dtype and strides; LayerNorm/RMSNorm): normalise
      h = x + residual instead, and write h to ``h`` (x's dtype and strides).
    * ``quant`` = (dtype, scale, dynamic): y quantized to int8 / fp8 e4m3 by ``scale``
      (fp32): a given per-tensor one, or, ``dynamic``, one per row written there.
    * ``act`` (activation.Act), ``post`` (a residual, x's dtype and strides) and ``mask``
      (bool, x's strides; relu / leaky_relu): y = act(norm(x) + post), and z > 0 into
      ``mask`` for the backward."""
    has_w, has_b = weight is not None, bias is not None
    epi = _NO_EPI if act is None and post is None else _epi(act, post, mask)
    qdtype, scale, dynamic = quant if quant is not None else (None, None, False)
    if mean is not None:
        L = _fwd_launch(3, x, view, spec, has_w, has_b, NO_RUNNING, 1, epi=epi)
        y = _out(L, x)
        _fwd(L, x, y, weight, bias, mean, var, None, eps, None, post, act=act, mask=mask)
        return y, (mean, var)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32   # acc_dtype(x)
    kind = NO_RUNNING if running is None else _running_kind(running)
    if partials is None:
        # A quantized output's config never splits a row (its amax is taken in one program).
        L = _fwd_launch(0, x, view, spec, has_w, has_b, kind, 1, residual is not None,
                        QUANT_KIND.get(qdtype, 0), dynamic, epi)
        if L.whole_rows:
            y = _out(L, x, qdtype)
            stats = x.new_empty(2 * L.n_stats, dtype=acc)
            _fwd(L, x, y, weight, bias, stats, None, None, eps, running,
                 post if residual is None else residual, h, scale, act, mask)
            return y, stats
        partials = forward_partials(x, view, spec, residual, h)
        if residual is not None:   # the partials pass wrote h: the merge pass reads it
            x = h
    L = _fwd_launch(2, x, view, spec, has_w, has_b, kind, partials.shape[1], epi=epi)
    y = _out(L, x, qdtype)
    stats = x.new_empty(2 * L.n_stats, dtype=acc)
    _fwd(L, x, y, weight, bias, stats, None, partials, eps, running, post, act=act, mask=mask)
    return y, stats


def _tile_outer(spec: ReductionSpec, cfg: config.RowConfig) -> bool:
    """LayerNorm/RMSNorm rows longer than one tile: the backward's elementwise walk
    runs tiles outside and rows inside, so dw/db stay in registers (row_norm_bwd)."""
    return spec.w_mode == W_BY_ELEMENT and cfg.chunk > 1


def _dwb_parts(view: RowView, spec: ReductionSpec, cfg: config.RowConfig, n_part):
    """A split backward whose rows each own one parameter (by row: BatchNorm's channels,
    InstanceNorm's, a channels_last GroupNorm walked a row a channel) and whose partials are
    all local (not SyncBatchNorm's, whose dw/db sum this rank's batch only, while its
    partials span every rank): its partials pass stores unweighted sums, from which the merge
    pass takes dw and db (row_norm_bwd's DWB_PARTS), so the column sum of per-program dw/db
    scratch -- a launch, and its scratch -- goes.  Returns the kernel's DWB_NP, or None
    where it does not apply: 0 where the merged sums are dw and db themselves (one sample,
    rows of their own statistics), else the [BLOCK_G, DWB_NP] tile of a parameter's N *
    SPLIT partials -- at most DWB_NP_PER_THREAD of them a thread, so the sum stays a few
    registers beside the merge pass's tile (InstanceNorm 8x128x128x128 channels_last, 32
    rows a block and 128 partials a row, keeps its column sum)."""
    if n_part is not None or w_mode(view, spec, cfg) != W_BY_ROW:
        return None
    if view.N == 1 and view.stat_rows == 1:
        return 0
    np_ = p2(view.N * cfg.SPLIT)
    if cfg.BLOCK_G * np_ > DWB_NP_PER_THREAD * 32 * cfg.num_warps:
        return None
    return np_


# Partials a thread sums for dw/db in a merge pass (_dwb_parts): two loads of this many
# registers each.
DWB_NP_PER_THREAD = 4


def _own_g(view: RowView, spec: ReductionSpec, cfg: config.RowConfig, target: int) -> bool:
    """A backward of unsplit rows whose parameters are one block a row (by row, or by channel
    in one j block: InstanceNorm, GroupNorm): one program a g block walks that block in every
    sample and sums its dw/db in registers (row_norm_bwd's OWN_G), so the column sum of
    per-sample dw/db scratch -- a launch and its scratch -- goes.

    The price is a program's rows: N of them, against ceil(n_rb / programs) at ``target``
    programs.  One row more paid for the launch it saves (fwd+bwd, NCHW, triton 3.6 / 3.9,
    ../shared/tools/sass_model.py): InstanceNorm 2x64x64x64 fp32 13.1 -> 10.5 / 12.8 -> 10.0
    us, 2x128x32x32 bf16 12.9 -> 10.2 / 12.7 -> 9.7; three more did not: GroupNorm
    4x1280x16x16 bf16 (32 programs of 4 rows, not 128 of 1) 14.5 -> 18.2 / 13.7 -> 15.3.

    Not for a tile past 8192 elements (16 warps, 128 registers a thread: see plan.even),
    where the sums held across rows spilled, though the model still counted a gain:
    GroupNorm 2x1280x16x16 NCHW bf16 / fp32 (40 channels a group in a [1, 64, 256] tile, a
    24 / 150-byte stack already) 74 / 411 bytes, 2x512x32x32 bf16 42 -> 121, InstanceNorm
    2x64x128x128 fp32 0 -> 13 (triton 3.9)."""
    rows_each = cdiv(cfg.n_rb, max(1, min(cfg.n_rb, target)))
    # cfg.SPLIT == 1: given statistics (PHASE 3) split rows too, and their split programs
    # would each store a part of the sums as the whole.
    return (1 < view.N <= rows_each + 1 and view.stat_rows == 1 and cfg.SPLIT == 1
            and cfg.BLOCK_G * cfg.BLOCK_J * cfg.BLOCK_S <= 8192
            and w_mode(view, spec, cfg) in (W_BY_ROW, W_BY_CHANNEL_ONE_BLOCK))


class _Backward(NamedTuple):
    """A backward's memoised plan: its main launch, and the partials launch
    (PHASE 1) where rows are split."""
    main: Launch
    partials: Optional[Launch]
    slots: int      # rows of the dw/db scratch
    cw: int         # parameter elements
    count: float    # default row length


def _bwd_launch(phase, x, view, spec, cfg, has_w, need_dwb, nprog, n_part,
                has_dres=False, has_b=False, epi=(0, False, False), final=False,
                parts=None, own=False) -> Launch:
    """``final``: the dw/db scratch would have one slot, so the kernel stores dw and db
    themselves (DWB_FINAL) and no column sum follows.  ``parts`` (DWB_PARTS, DWB_NP = parts;
    None: off): dw and db come from the partials (_dwb_parts), not from the merge pass's
    walk.  ``own``
    (OWN_G, _own_g): each program sums one g block's dw/db over every sample."""
    if parts is not None and phase == 1:
        # The unweighted partials need w only to recompute z for an activation.
        has_w = has_w and epi[0] != 0 and not epi[2]
    if phase == 2:   # a statistics row merges the partials of each of its rows (_fwd_launch)
        n_part *= view.stat_rows
    consts = dict(PHASE=phase, CENTER=spec.center, HAS_W=has_w,
                  NEED_DWB=need_dwb and phase != 1 and parts is None,
                  W_MODE=w_mode(view, spec, cfg),
                  RESIDENT=cfg.chunk == 1, TILE_OUTER=phase in (2, 3) and _tile_outer(spec, cfg),
                  HAS_DRES=has_dres and phase != 1, Y_STRIDED=rows_strided(view, spec),
                  HAS_B=has_b, ACT=epi[0], ADD_Y=epi[1], MASK=epi[2],
                  ACC=tl_acc(acc_dtype(x)), **blocks(view, cfg, n_part, x.element_size(), True),
                  DWB_FINAL=final and need_dwb and phase != 1, DWB_PARTS=parts is not None,
                  OWN_G=own and need_dwb and phase in (0, 3), DWB_NP=parts or 0)
    ints = geometry(view, spec, cfg, n_part) + (
        (0, 0) if phase == 3 else (view.G, view.stat_count)) + (param_count(view, spec),)
    return make_launch(row_norm_bwd, (nprog, cfg.SPLIT if phase != 0 else 1), ints, consts, cfg,
                       bwd_pointers, view, spec)


def _bwd_plan(x, view, spec, has_w, need_dwb, fixed, n_part, has_dres=False, has_b=False,
              epi=(0, False, False)) -> _Backward:
    """``n_part``: partials given from outside (SyncBatchNorm), or None; ``epi`` as
    _fwd_launch's (has_b matters only with an activation, which recomputes z).  Keyed on
    the caller's view; the kernels walk its kernel_view."""
    has_b = has_b and epi[0] != 0 and not epi[2]   # a sign mask stands in for z
    key = (view, x.dtype, x.get_device(), spec, has_w, need_dwb, fixed, n_part, has_dres, has_b,
           epi)
    hit = _BWD.get(key)
    if hit is not None:
        return hit
    view = kernel_view(view, spec, x.element_size())
    cfg = config.row_config(view, x, spec, "bwd")
    cw = param_count(view, spec)
    nprog = config.backward_programs(cfg, x, cw, spec.w_mode)
    part = None
    split = not fixed and (n_part is not None or cfg.SPLIT > 1 or _tile_outer(spec, cfg)
                           or view.stat_rows > 1)
    parts = _dwb_parts(view, spec, cfg, n_part) if split and need_dwb else None
    own = not split and need_dwb and _own_g(view, spec, cfg, target_programs(x))
    if own:
        nprog = cfg.nGB
    slots = 1 if parts is not None or own else dwb_slots(view, spec, cfg, nprog)
    flags = (has_dres, has_b, epi, slots == 1)
    if fixed:
        main = _bwd_launch(3, x, view, spec, cfg, has_w, need_dwb, nprog, 1, *flags, own=own)
    elif not split:
        main = _bwd_launch(0, x, view, spec, cfg, has_w, need_dwb, nprog, 1, *flags, own=own)
    else:
        part = _bwd_launch(1, x, view, spec, cfg, has_w, False, nprog, cfg.SPLIT, *flags, parts)
        if epi[1]:   # the partials pass stored dz (the residual's gradient): the merge reads it
            flags = (has_dres, False, (0, False, False), slots == 1)
        main = _bwd_launch(2, x, view, spec, cfg, has_w, need_dwb, nprog, n_part or cfg.SPLIT,
                           *flags, parts)
    plan = _Backward(main, part, slots, cw, float(view.Cg * view.S * view.stat_rows))
    return config.remember(_BWD, key, plan)


class Epilogue(NamedTuple):
    """What a backward needs of the forward's epilogue (row_forward's act, post, mask):
    the bias and the residual recompute z, or the mask gives its sign; ``dr`` receives
    the residual's gradient."""
    act: object
    bias: Optional[torch.Tensor] = None
    post: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    dr: Optional[torch.Tensor] = None

    @property
    def flags(self) -> tuple:
        return (self.act.code, self.dr is not None, self.mask is not None)

    @classmethod
    def of(cls, act, x, bias, has_post: bool, post=None, mask=None) -> Optional["Epilogue"]:
        """A backward's Epilogue, the residual's gradient allocated where there is a
        residual; None without an activation (the residual's gradient is then dy)."""
        if act is None:
            return None
        return cls(act, bias, post, mask, torch.empty_like(x) if has_post else None)


def sign_mask(x: torch.Tensor, post, act) -> Optional[torch.Tensor]:
    """The sign mask of z (bool, x's layout) for relu / leaky_relu after a residual: the
    backward then needs neither z nor the residual.  None otherwise."""
    if post is not None and act is not None and act.maskable and x.numel():
        return torch.empty_like(x, dtype=torch.bool)
    return None


def _bwd(L: Launch, x, dy, dx, weight, mean, rstd, part, dwb, count, eps, dres=None,
         epi: Optional[Epilogue] = None, db=None):
    """``dwb``: the dw/db scratch, or dw itself with ``db`` (a plan with one slot)."""
    extra = (None, None, None, None) if epi is None else (epi.bias, epi.post, epi.mask, epi.dr)
    _run_bwd(L.compiled, kept(L, (x, dy, dx, weight, mean, rstd, part, dwb, db, dres) + extra),
             scalars(L, (eps, None if epi is None else epi.act.slope), (float(count),)), L.grid, L.opts)


def _plan(x, view, spec, weight, need_dwb, fixed, n_part, has_dres, epi) -> _Backward:
    if epi is None:
        return _bwd_plan(x, view, spec, weight is not None, need_dwb, fixed, n_part, has_dres)
    return _bwd_plan(x, view, spec, weight is not None, need_dwb, fixed, n_part, has_dres,
                     epi.bias is not None, epi.flags)


def backward_partials(x, dy, view: RowView, spec: ReductionSpec, weight, stats,
                      epi: Optional[Epilogue] = None):
    """Per-program (sum w*dz*xhat, sum w*dz) of every row: shape (rows, SPLIT, 2); with a
    residual epilogue, dz itself goes to ``epi.dr`` (row_backward's merge pass reads it).
    ``stats``: the forward's (row_forward)."""
    L = _plan(x, view, spec, weight, False, False, 0, False, epi).partials
    part = torch.empty(L.rows, L.cfg.SPLIT, 2, dtype=acc_dtype(x), device=x.device)
    _bwd(L, x, dy, x, weight, stats, None, part, None, 1.0, 0.0, epi=epi)
    return part


def row_backward(x, dy, view: RowView, spec: ReductionSpec, weight, stats,
                 need_dw: bool, need_db: bool, fixed: bool = False, partials=None,
                 count: float = None, eps: float = 0.0, dres=None,
                 epi: Optional[Epilogue] = None):
    """Gradients (dx, dw, db) of row_forward; dw/db are None unless asked for.

    ``stats``: row_forward's, the means and rstds.  ``fixed`` marks statistics
    that are constants (running statistics): then ``stats`` is (mean, var), and
    dx = w * dy * rsqrt(var + eps).  ``partials`` (rows, P, 2) replaces the local row
    sums, which are then divided by ``count`` (default: the row length).  ``dres`` (x's
    strides) is added to dx: the gradient of h for a fused residual add, whose forward
    saved h as ``x``.  ``epi``: the forward had an activation (and residual) epilogue
    (Epilogue; its ``dr`` is filled)."""
    need_dwb = need_dw or need_db
    plan = _plan(x, view, spec, weight, need_dwb, fixed,
                 None if partials is None else partials.shape[1], dres is not None, epi)
    mean, var = stats if fixed else (stats, None)
    dx = _out(plan.main, x)
    # Every element of the dw/db scratch is written exactly once by the kernel: no zero fill.
    # With one slot (one program sums each parameter) the kernel writes dw and db directly.
    out_dtype = weight.dtype if weight is not None else x.dtype
    dwb = db = None
    if need_dwb and plan.slots == 1:
        dwb = torch.empty(plan.cw, dtype=out_dtype, device=x.device)
        db = torch.empty(plan.cw, dtype=out_dtype, device=x.device)
    elif need_dwb:
        dwb = torch.empty(plan.slots * 2 * plan.cw, dtype=acc_dtype(x), device=x.device)
    count = plan.count if count is None else count
    if fixed:
        _bwd(plan.main, x, dy, dx, weight, mean, var, None, dwb, count, eps, dres, epi, db)
    elif plan.partials is None:
        _bwd(plan.main, x, dy, dx, weight, mean, None, None, dwb, count, 0.0, dres, epi, db)
    else:
        if partials is None:
            partials = torch.empty(plan.main.rows, plan.partials.cfg.SPLIT, 2,
                                   dtype=acc_dtype(x), device=x.device)
            _bwd(plan.partials, x, dy, x, weight, mean, None, partials, None, 1.0, 0.0,
                 epi=epi)
        if epi is not None and epi.dr is not None:
            # The partials pass (here, or backward_partials' for SyncBatchNorm) wrote dz.
            dy, epi = epi.dr, None
        _bwd(plan.main, x, dy, dx, weight, mean, None, partials, dwb, count, 0.0, dres, epi,
             db)
    if dwb is None:
        return dx, None, None
    if db is not None:
        dw = dwb
    else:
        dw, db = column_sums(dwb, plan.slots, 2 * plan.cw, out_dtype, plan.cw)
    return dx, dw if need_dw else None, db if need_db else None


def column_sums(partials: torch.Tensor, a: int, k: int, out_dtype: torch.dtype, k1: int):
    """Deterministic sum over axis 0 of ``partials`` read as an [a, k] matrix, as
    two separate tensors: columns [0, k1) and [k1, k) -- no storage shared, so no
    copy is needed where outputs may not alias (custom ops)."""
    key = (a, k, partials.get_device())
    blocks = _COLSUM.get(key)
    if blocks is None:
        block_a, block_k, warps = config.column_sum_blocks(a, k, target_programs(partials))
        blocks = config.remember(_COLSUM, key, ((cdiv(k, block_k), 1, 1), block_a, block_k,
                                                {"num_warps": warps}, {}))
    grid, block_a, block_k, opts, compiled = blocks
    first = torch.empty(k1, dtype=out_dtype, device=partials.device)
    second = torch.empty(k - k1, dtype=out_dtype, device=partials.device)
    _run_column_sum(compiled, (partials, first, second), (a, k, k1, block_a, block_k), grid, opts)
    return first, second
