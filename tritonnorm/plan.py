"""Launch plans of the row-norm kernels: what a launch needs that depends only on the view,
the dtypes and the flags -- the geometry ints, the tile constexprs, the launch options --
in the form dispatch.py memoises (``Launch``), and the kernels' parameter modes."""
from typing import NamedTuple, Optional

import numpy as np
import torch
import triton.language as tl

from . import config
from .spec import W_BY_CHANNEL, W_BY_ELEMENT, W_BY_ROW, ReductionSpec, RowView, rows_strided

_FLOATS = config.memo()


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation and saved-statistics dtype: fp32, or fp64 for fp64 input."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def p2(n: int) -> int:
    """Next power of two (triton.next_power_of_2 costs microseconds a call)."""
    return 1 << max(int(n) - 1, 0).bit_length()


class Launch(NamedTuple):
    """One kernel launch, but for its tensors and floats: memoised per shape."""
    grid: tuple
    ints: tuple     # the runtime ints after the pointers
    consts: tuple   # the constexprs, positionally, in the kernel's order
    opts: dict      # num_warps, num_stages
    cfg: config.RowConfig
    compiled: dict  # the compiled kernels its launches use (launch.launcher)
    keep: tuple     # (pointer parameters, the indices of those the specialisation uses)
    scalars: dict   # runtime floats -> every scalar argument of the launch (``scalars``)
    rows: int = 0   # rows of the view (and of its partials)
    dense_out: bool = False   # outputs row-major, x's rows being strided (spec.rows_strided)
    n_stats: int = 0   # the statistics a forward saves: one a row, or a group of rows

    @property
    def whole_rows(self) -> bool:
        """One program has all a statistic's elements: the rows are not split, and no rows
        share statistics (RowView.stat_rows), whose partials must then be merged."""
        return self.cfg.SPLIT == 1 and self.n_stats == self.rows


def fwd_pointers(c: dict) -> set:
    """The pointer parameters row_norm_fwd reads or writes under constexprs ``c``."""
    used = {"X_ptr"}
    if c["PHASE"] != 1:   # the saved statistics are one tensor (kernels/row_norm.py, Mean_ptr)
        used |= {"Y_ptr", "Mean_ptr"} | ({"Rstd_ptr"} if c["PHASE"] == 3 else set())
        used |= {n for n, flag in (("W_ptr", "HAS_W"), ("B_ptr", "HAS_B")) if c[flag]}
    if c["PHASE"] in (1, 2):
        used.add("Part_ptr")
    if c["UPDATE_RUNNING"]:
        used |= {"RM_ptr", "RV_ptr", "RMo_ptr", "RVo_ptr"} | ({"NBT_ptr"} if c["CUMULATIVE"] else set())
    if c["HAS_RES"]:
        used |= {"R_ptr", "H_ptr"}
    if c["ADD_Y"]:
        used.add("R_ptr")
    if c["QUANT"]:
        used.add("Scale_ptr")
    if c["MASK"]:
        used.add("Mask_ptr")
    return used


def bwd_pointers(c: dict) -> set:
    """The pointer parameters row_norm_bwd reads or writes under constexprs ``c``."""
    # The saved statistics are one tensor, rstd beside the mean (kernels/row_norm.py,
    # Mean_ptr); given ones (PHASE 3) are two.
    if c["PHASE"] == 3:
        used = {"X_ptr", "DY_ptr", "Rstd_ptr"} | ({"Mean_ptr"} if c["CENTER"] else set())
    else:
        used = {"X_ptr", "DY_ptr", "Mean_ptr"}
    if c["PHASE"] != 1:
        used.add("DX_ptr")
    if c["HAS_W"]:
        used.add("W_ptr")
    if c["HAS_B"]:
        used.add("B_ptr")
    if c["PHASE"] in (1, 2):
        used.add("Part_ptr")
    if c["NEED_DWB"]:
        used |= {"DWB_ptr", "DB_ptr"} if c["DWB_FINAL"] else {"DWB_ptr"}
    if c["DWB_PARTS"] and c["DWB_FINAL"]:   # dw, db from the merged partials
        used |= {"DWB_ptr", "DB_ptr"}
    if c["HAS_DRES"]:
        used.add("DH_ptr")
    if c["ACT"] and c["MASK"]:
        used.add("Mask_ptr")
    elif c["ACT"] and c["ADD_Y"]:
        used.add("R_ptr")
    if c["ADD_Y"]:
        used.add("DR_ptr")
    return used


def make_launch(kernel, grid, ints, consts: dict, cfg, pointers=None, view=None,
                spec=None) -> Launch:
    """Constexprs go positionally: a launch then passes two keywords, not twenty --
    a microsecond a call on a slow host (the constexprs are the kernel's last
    parameters).  ``pointers(consts)`` names the pointer parameters the specialisation
    uses; the others go as None (``keep``), which triton specialises away: its launcher
    then reads no address for them (about 0.3 us of host time each on a GPU, issue 24).
    perf/compile_check.py checks every pointer passed has a use in the compiled kernel."""
    opts = {k: consts.pop(k) for k in ("num_warps", "num_stages")}
    names = kernel.arg_names[len(kernel.arg_names) - len(consts):]
    assert set(names) == set(consts), (names, consts)
    grid = tuple(grid) + (1,) * (3 - len(grid))
    ptrs = [n for n in kernel.arg_names if n.endswith("_ptr")]
    used = pointers(consts) if pointers is not None else set(ptrs)
    out = () if view is None else (view.rows, rows_strided(view, spec), view.stat_count)
    return Launch(grid, ints, tuple(consts[n] for n in names), opts, cfg, {},
                  (len(ptrs), tuple(i for i, n in enumerate(ptrs) if n in used)), {}, *out)


def kept(L: Launch, tensors: tuple) -> list:
    """A launch's pointer arguments: ``tensors``, None where the specialisation has no use
    for them (see make_launch).  A filled list of None, not a comprehension over every
    pointer: 0.24 us against 0.74 for the 16 of row_norm_fwd."""
    n, used = L.keep
    out = [None] * n
    for i in used:
        out[i] = tensors[i]
    return out


# Float tuples a plan remembers the scalars of; past this the memo starts over (an eps
# that changes every call must not grow it without bound).
SCALARS_MAX = 16


def scalars(L: Launch, floats: tuple, plain: tuple = ()) -> tuple:
    """A launch's scalar arguments: its ints, ``plain`` as they are, each of ``floats`` as
    hi, lo fp32 parts (split_float), its constexprs -- memoised on the plan, since a layer
    calls with the same eps (momentum, slope) every time: building the 40-odd tuple cost
    more than looking it up."""
    key = (floats, plain)
    hit = L.scalars.get(key)
    if hit is None:
        if len(L.scalars) >= SCALARS_MAX:
            L.scalars.clear()
        parts = [p for f in floats for p in split_float(f)]
        hit = L.scalars[key] = (*L.ints, *plain, *parts, *L.consts)
    return hit


def geometry(view: RowView, spec: ReductionSpec, cfg: config.RowConfig, n_part: int):
    """The kernels' geometry ints; the outputs' row strides (ysN, ysG) are x's, or the
    dense ones where x's rows are strided (spec.rows_strided)."""
    ys = (view.G * view.Cg, view.Cg) if rows_strided(view, spec) else (view.sN, view.sG)
    # The stride of an axis of size 1 is never used: it goes as 0, which the JIT marks
    # divisible by 16.  As torch's stride (1, say) the kernel would add j * 1 with j of
    # unknown alignment, and the compiler could no longer prove the wide loads of the
    # contiguous axis (channels_last InstanceNorm: 16-bit loads, ../shared/tools/sass_model.py).
    sJ = view.sJ if view.Cg > 1 else 0
    sS = view.sS if view.S > 1 else 0
    return (view.G, view.Cg, view.S, view.sN, view.sG, sJ, sS,
            cfg.n_rb, cfg.nGB, cfg.nSB, cfg.T, cfg.chunk, cfg.SPLIT, n_part) + ys


def even(view: RowView, cfg: config.RowConfig, itemsize: int, backward: bool,
         residual_merge: bool = False) -> bool:
    """Whether the tiles go unmasked (EVEN, kernels/tiles.py, tile_offsets): the blocks
    divide G, Cg and S, so every tile is whole, and the tile's run along the contiguous
    axis is at least 16 bytes, so its loads are vectors.  Why that last condition: scalar
    loads left unmasked were issued one by one, as ptxas saved registers, where with a
    mask and a fill it issued them all at once (channels_last GroupNorm backward, 4 channels
    a group: 75 -> 228 us, ../shared/tools/sass_model.py)."""
    if view.G % cfg.BLOCK_G or view.Cg % cfg.BLOCK_J or view.S % cfg.BLOCK_S:
        return False
    if residual_merge:
        # A forward merge pass that also reads the epilogue's residual keeps its mask:
        # unmasked, ptxas hoisted the residual's loads beside x's and spilled (BatchNorm
        # 8x64x28x28 bf16 NHWC with a residual and relu, triton 3.9: a 48-byte stack frame,
        # perf/compile_check.py --quick).
        return False
    if backward and cfg.BLOCK_G * cfg.BLOCK_J * cfg.BLOCK_S > 8192:
        # A backward tile past 8192 elements (16 warps, 128 registers a thread) holds x, dy
        # and w in registers; unmasked, ptxas hoisted more loads and spilled (InstanceNorm
        # 8x128x128x128): the mask stays.
        return False
    axes = ((view.G, view.sG, cfg.BLOCK_G), (view.Cg, view.sJ, cfg.BLOCK_J),
            (view.S, view.sS, cfg.BLOCK_S))
    run = [b for size, stride, b in axes if size > 1 and stride == 1]
    return bool(run) and run[0] * itemsize >= 16


def blocks(view: RowView, cfg: config.RowConfig, n_part: int, itemsize: int, backward: bool,
           residual_merge: bool = False):
    """The tile constexprs (EVEN: see even; I32: see config.offsets_i32; VEC: see
    config.vector)."""
    return dict(BLOCK_G=cfg.BLOCK_G, BLOCK_J=cfg.BLOCK_J, BLOCK_S=cfg.BLOCK_S,
                BLOCK_PART=p2(n_part), EVEN=even(view, cfg, itemsize, backward, residual_merge),
                STAT_ROWS=view.stat_rows,
                I32=config.offsets_i32(view, cfg.BLOCK_G, cfg.BLOCK_J, cfg.BLOCK_S, itemsize),
                VEC=config.vector(view, itemsize, cfg.chunk == 1),
                num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def split_float(value):
    """Float arguments travel as fp32 on a GPU: a float goes as hi + lo fp32 parts, which
    an fp64 kernel adds back to 48 significant bits (kernels/tiles.py, ``wide``)."""
    parts = _FLOATS.get(value)
    if parts is None:
        hi = float(np.float32(value or 0.0))
        parts = config.remember(_FLOATS, value, (hi, float(np.float32((value or 0.0) - hi))))
    return parts


# The backward's W_MODE for parameters by channel where a tile's j block holds all of a
# row's channels (kernels/row_norm_bwd.py).
W_BY_CHANNEL_ONE_BLOCK = 3


def w_mode(view: RowView, spec: ReductionSpec, cfg: Optional[config.RowConfig] = None) -> int:
    """The kernels' W_MODE: the spec's, but parameters by channel are parameters by row
    where a row is one channel (InstanceNorm, GroupNorm with G = C), and, in the backward
    (``cfg`` given), W_BY_CHANNEL_ONE_BLOCK where one j block holds all of a row's
    channels.  Both sum dw/db over a program's whole walk and store them once; by channel
    the backward stores each j block's channels as its walk leaves the block, a branch in
    the hot loop."""
    if spec.w_mode == W_BY_CHANNEL and view.Cg == 1:
        return W_BY_ROW
    if spec.w_mode == W_BY_CHANNEL and cfg is not None and cfg.BLOCK_J >= view.Cg:
        return W_BY_CHANNEL_ONE_BLOCK
    return spec.w_mode


def dwb_slots(view: RowView, spec: ReductionSpec, cfg: config.RowConfig, nprog: int) -> int:
    """Rows of the backward's dw/db scratch: one per program that owns a slot
    (see row_norm_bwd): persistent programs (LayerNorm/RMSNorm), or samples x split
    programs (by row or channel; BatchNorm's view has one sample)."""
    if spec.w_mode == W_BY_ELEMENT:
        return nprog
    return view.N * cfg.SPLIT


def param_count(view: RowView, spec: ReductionSpec) -> int:
    """Elements of the affine parameters: one per row element, row or channel."""
    return {W_BY_ELEMENT: view.Cg, W_BY_ROW: view.G}.get(spec.w_mode, view.G * view.Cg)
