"""Launch configurations: tile shapes, split factor, program counts.

Heuristics live here, each threshold with the reason for it.  ``override``
lets tests (and users chasing a problem) force a small tile or a split so the
looping and split-reduction paths run on small inputs.
"""
import contextlib
from dataclasses import dataclass

import torch
import triton

from . import tables
from ._runtime import INTERPRET, gpu_plan, target_programs
from .kernels.tiles import TRITON_VERSION
from .spec import W_BY_ELEMENT, ReductionSpec, RowView

# Elements in one [BLOCK_G, BLOCK_J, BLOCK_S] tile.  4096 fp32 accumulators over
# 8 warps is 16 registers per live tile per thread: large enough for wide,
# vectorised loads, small enough that x, xhat, w and dy stay in registers.
# fp64 halves it since every value takes two registers.
MAX_TILE = {torch.float64: 2048}
DEFAULT_MAX_TILE = 4096
# Bound on programs that share one row: the merge step loads all SPLIT partials
# of a row at once, and past a few hundred the partial traffic stops paying.
MAX_SPLIT = 256
# LayerNorm/RMSNorm backward: each persistent program writes a dw/db slot as long
# as the row, which column_sum reads back; keeping that under 1/32 of x's bytes
# holds the scratch's share of the pass's traffic (3 x bytes of x) to about 2%.
DWB_FRACTION = 32
# Rows up to this many elements are kept whole in registers (RESIDENT), loaded once
# per pass, over at most 16 warps (128 registers a thread in a 64K-register SM).
# "wide": contiguous rows (LayerNorm/RMSNorm, NCHW GroupNorm/InstanceNorm) have affine
# addresses; their forward, and the GroupNorm/InstanceNorm backward (x, dy and a
# per-channel w), compile for 16384 fp32 elements without spilling (but for the backward of
# [16, 1024] fp32 tiles, 10-channel groups: 16 bytes; perf/compile_check.py).  So do
# channels_last GroupNorm rows whose channel runs load as 16-byte vectors (vector_rows in
# _row_config): an offset a vector, not an element.  "narrow": the
# LayerNorm/RMSNorm backward also holds row-wide dw/db sums, and strided channels_last
# views a 64-bit offset (two registers) per element: 16384 of them spilled, 8192 do
# not (perf/compile_check.py).  fp64 values take two registers and the fp64 tile runs
# twice the warps: a quarter.
RESIDENT_MAX = {"wide": 16384, "narrow": 8192}

# Partials (count, mean, M2) per thread that the split merge may load at once:
# 16 triples are 48 registers, as much as the tile itself holds.
MERGE_PER_THREAD = 16
# The program a split's target counts (row_config): smaller programs get more of them.
WARPS_A_PROGRAM = 4

_overrides: dict = {}


@contextlib.contextmanager
def override(**kw):
    """Force ``max_tile``, ``split``, ``programs``, ``num_warps``, ``num_stages`` or
    ``split_scale`` inside a ``with`` block."""
    old = dict(_overrides)
    _overrides.update(kw)
    clear_cache()
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(old)
        clear_cache()


@dataclass(frozen=True)
class RowConfig:
    BLOCK_G: int
    BLOCK_J: int
    BLOCK_S: int
    SPLIT: int
    chunk: int      # tiles per split program
    n_rb: int       # row blocks: N * ceil(G / BLOCK_G)
    nGB: int
    nSB: int
    T: int          # tiles per row
    num_warps: int
    num_stages: int = 3   # software-pipelining depth of the tile loops (triton's default)
    per_sm: int = 4       # programs an SM the forward's persistent grid aims at (_warp_a_row)


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


# What `tritonnorm tune` sweeps: tile budget, warps, pipelining depth of the tile
# loops, and a multiplier of the program target that decides how finely few long
# rows are split (so also how many rows a program walks).  Pruned to at least 4
# elements per thread: fewer leaves lanes idle on every tile.
# num_stages pipelines loads that feed tl.dot; our tile loops have none, and every
# kernel's cubin is byte-identical for num_stages 1 to 4 (triton 3.9, sm_90,
# perf/compile_check.py), so one depth is swept: more would only multiply tuning
# time.  Widen TUNE_STAGES if a kernel ever pipelines.
TUNE_STAGES = (3,)
TUNE_SPACE = [dict(max_tile=t, num_warps=w, num_stages=st, split_scale=s)
              for t in (1024, 2048, 4096, 8192) for w in (2, 4, 8) for st in TUNE_STAGES
              for s in (1, 4) if t // (32 * w) >= 4]
# `tune --quick`: the tiles and warps around the defaults, each compiled config
# costing about a second, so a quick run fits a few minutes of GPU time.
QUICK_SPACE = [c for c in TUNE_SPACE if c["max_tile"] in (2048, 4096) and c["num_warps"] in (4, 8)]


def bucket_key(view: RowView, x: torch.Tensor, spec_name: str, pass_: str) -> str:
    """Tuning bucket: norm, pass, dtype, layout and power-of-two row length and
    row count -- never raw sizes, which would multiply the tunings."""
    layout = "nc" if view.memory_format == torch.contiguous_format else "cl"
    return (f"{spec_name}/{pass_}/{str(x.dtype).replace('torch.', '')}/{layout}"
            f"/L{_p2(view.Cg * view.S)}/R{_p2(view.rows)}")


def _tuned(view: RowView, x: torch.Tensor, spec_name, pass_) -> dict:
    """The tuned entry for this launch; none under the interpreter (one config)."""
    if spec_name is None or x.device.type != "cuda" or INTERPRET or _overrides:
        return {}
    return tables.device_table(torch.cuda.get_device_name(x.device)).get(
        bucket_key(view, x, spec_name, pass_), {})


# Every memo of launch decisions (here and in dispatch): all are cleared together when
# the overrides or the tuning tables change, so none of them keys on those.
_MEMOS: list = []
# A bound on each memo, for shape-churning workloads: past it, the memo starts over.
MEMO_MAX = 4096


def memo() -> dict:
    """A new memo that clear_cache() empties."""
    d: dict = {}
    _MEMOS.append(d)
    return d


def remember(d: dict, key, value):
    if len(d) >= MEMO_MAX:
        d.clear()
    d[key] = value
    return value


_CONFIGS = memo()


def row_config(view: RowView, x: torch.Tensor, spec: ReductionSpec = None,
               pass_: str = "fwd") -> RowConfig:
    """The launch config of one pass, memoised: it is a pure function of the view,
    dtype, device, norm, pass and overrides, and is asked for several times per
    step (partials, merge, backward), so the host work is done once per shape."""
    key = (view, x.dtype, x.device, spec, pass_)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg = remember(_CONFIGS, key, _row_config(view, x, spec, pass_))
    return cfg


def clear_cache() -> None:
    """Forget memoised configs and launch plans (after a new tuning table is
    written, or when the overrides change)."""
    for d in _MEMOS:
        d.clear()


def _coalescing_rows(view: RowView, order, itemsize: int) -> int:
    """Rows a tile must span for coalesced loads.  Rows are the contiguous axis in
    channels_last InstanceNorm/BatchNorm: 32 adjacent rows give a warp 128 bytes
    and more.  In channels_last GroupNorm a row's Cg channels are contiguous and
    the next group follows: under 128 bytes of them, a tile spans enough groups
    to fill a 128-byte line, or a warp would touch part of every 32-byte sector."""
    if not order:
        return 1
    if order[0] == "g":
        # Rows that merge their group's partials (channels_last GroupNorm walked by channel,
        # spec.kernel_view) take 16: twice the row blocks, and half the partials a merge
        # tile loads, so a row splits further (GroupNorm 2x320x64x64 bf16 NHWC fwd+bwd, 32
        # rows: 52.5 us, 16: 35.4, 8: 39.1; ../shared/tools/sass_model.py, triton 3.6).
        return 16 if view.stat_rows > 1 else 32
    if order[0] == "j" and view.S > 1 and view.sG == view.Cg * view.sJ and view.Cg * itemsize < 128:
        return _p2(triton.cdiv(128, view.Cg * itemsize))
    return 1


# Padding of a walked axis a tile may leave: past 1/16 of the axis, masked lanes cost more
# than a smaller tile does (BatchNorm NCHW, S = 56 * 56 = 3136 in 4096-element tiles, left
# 23 % of every tile idle: ../shared/tools/sass_model.py).
MAX_PAD = 1 / 16


def _low_waste(n: int, cap: int, floor: int, depth: int = 8) -> int:
    """A power-of-two block for walking n elements, at most cap: one that divides n, down
    to cap / depth (whole tiles go unmasked: plan.even); else, with a floor (the
    contiguous axis: one 128-byte line, narrower and a warp's loads would no longer fill
    whole lines), the largest down to floor whose tiles pad n by at most MAX_PAD, or the
    one in that range that pads least; else (floor 0, another axis) cap -- a few elements
    of a strided axis a tile spread the tile's reductions over more of it (BatchNorm
    32x2048x7x7 NHWC: S = 49 in blocks of 4, 59 -> 83 us, ../shared/tools/sass_model.py)."""
    b = cap
    while b >= max(1, floor, cap // depth):
        if n % b == 0:
            return b
        b //= 2
    if floor == 0:
        return cap
    best, best_pad = cap, None
    b = cap
    while b >= min(floor, cap):
        pad = (-(-n // b) * b - n) / n
        if pad <= MAX_PAD:
            return b
        if best_pad is None or pad < best_pad:
            best, best_pad = b, pad
        b //= 2
    return best


def _four_an_sm(view: RowView, x: torch.Tensor, layer: bool, pass_: str, tiles: int,
                block_g: int, split: int) -> bool:
    """Launches held to 4 warps a program.  Their grids aim at four programs an SM
    (target_programs, forward_programs), but their 8-warp programs (80-125 registers) fit
    two an SM, so the grid ran in two waves of one dependent chain each; 4-warp programs fit
    four or five, one wave.  ../shared/tools/sass_model.py, triton 3.6 (3.9 alike):

    * rows that are the contiguous axis (channels_last InstanceNorm and BatchNorm), split
      over many programs, in half precision: fwd+bwd InstanceNorm 4x64x256x256 bf16 NHWC
      112.7 -> 88.6 us, BatchNorm 32x512x28x28 bf16 NHWC 95.9 -> 79.2.  fp32 walks, and
      GroupNorm's (contiguous along j), lost by it;
    * a LayerNorm (``layer``: weights by element, centred) forward of short rows, several a
      tile: 8192x768 bf16 17.8 -> 12.5 us, fp32 22.0 -> 14.2.  RMSNorm (no mean, 62
      registers: four 8-warp programs fit) and rows of a tile each lost by it."""
    if split > 1 and view.sG == 1 and view.G > 1 and x.element_size() <= 2:
        return True
    return pass_ == "fwd" and layer and tiles == 1 and block_g > 1


# Programs an SM for one-warp programs (_warp_a_row): as many as fit at up to 170
# registers a thread (65536 / (32 x 170) = 12), one wave of them.
WARP_A_ROW_PER_SM = 12


def _warp_a_row(view: RowView, x: torch.Tensor, spec, pass_) -> bool:
    """A LayerNorm forward in half precision whose rows are 513 to 1024 elements: one row a
    tile and one warp a program, 12 programs an SM.  Rows of a [4, 1024] tile spread over 4
    warps reduced through shared memory, with barriers (44 shuffles, 24 shared accesses and
    10 barriers a row block): latency-bound.  A warp reduces its row with shuffles alone.
    ../shared/tools/sass_model.py, forward, triton 3.6 / 3.9: 8192x768 bf16 12.5 -> 9.6 /
    12.2 -> 9.5 us (8.5 under 3.6 at 13 programs an SM, which the fused residual's 168
    registers would not fit), 16384x1024 21.7 -> 18.1 / 21.1 -> 18.1, 4096x1024 fp16 7.8 -> 6.4.
    Rows of 512 lost by it (16384x512 12.6 -> 13.6, 3.6), fp32 and RMSNorm (no mean, no
    second reduction) are at their bandwidth floor either way.  The quantized-output forward
    takes the forward's config, so it too (its amax one more shuffle reduction; not timed
    apart)."""
    return (pass_ == "fwd" and spec is not None and spec.w_mode == W_BY_ELEMENT and spec.center
            and x.element_size() == 2 and view.S == 1 and 512 < view.Cg <= 1024)


def _unaligned_runs(view: RowView, itemsize: int) -> bool:
    """Runs of S contiguous elements that start off a 16-byte boundary, several of them a
    row (BatchNorm NCHW at 7x7 or 14x14): a tile of them loads element by element."""
    return view.Cg > 1 and view.sS == 1 and (view.S * itemsize) % 16 != 0


# Tiles this large take int32 offsets wherever they fit (offsets_i32).
I32_TILE = 16384


def offsets_i32(view: RowView, block_g: int, block_j: int, block_s: int, itemsize: int) -> bool:
    """Tile offsets in int32 (kernels/tiles.py, tile_offsets' I32): where a tile's elements
    load one by one -- runs of S contiguous elements that start off a 16-byte boundary
    (BatchNorm NCHW at 7x7 or 14x14), each element with its own address -- and every offset
    a tile can form, padding included, fits in int32.  An int64 offset takes two registers
    an element.  fwd+bwd BatchNorm 32x2048x7x7 NCHW, triton 3.6 / 3.9: bf16 50.4 -> 31.6 /
    59.2 -> 33.2 us, fp32 50.2 -> 32.7 / 58.9 -> 33.1 (with 16 elements a thread again: see
    _row_config); ../shared/tools/sass_model.py.  Contiguous, vectorised tiles lost by int32
    (LayerNorm 8192x768 fp32 38.6 -> 46.9 under 3.6), so they keep int64 -- but for tiles of
    I32_TILE elements and more, whose 16 warps have 128 registers a thread for 32 elements:
    there int64 offsets spilled (GroupNorm NCHW backward [64, 256] tiles under both tritons,
    LayerNorm 16384 fp32 forward under 3.9; perf/compile_check.py) and int32 ones do not
    (GroupNorm 2x1280x16x16 bf16 NCHW backward 5.2 -> 4.6 us, triton 3.6)."""
    large = block_g * block_j * block_s >= I32_TILE
    if not (large or (view.S > 1 and _unaligned_runs(view, itemsize))):
        return False
    # Padded to whole blocks, and one block more on each walked axis: a statistics walk
    # takes tiles two at a time, the second of an odd chunk's last pair one past the row
    # (masked, but its offsets are formed).
    padded = (view.N * view.sN + triton.cdiv(view.G, block_g) * block_g * view.sG
              + (triton.cdiv(view.Cg, block_j) + 1) * block_j * view.sJ
              + (triton.cdiv(view.S, block_s) + 1) * block_s * view.sS)
    return padded < 2 ** 31


def _vector_run(view: RowView, itemsize: int) -> int:
    """Elements of the widest aligned run, at most 16 bytes, that a tile can load as one
    vector along a contiguous j axis: a power of two dividing Cg and every stride."""
    if view.sJ != 1 or view.Cg <= 1:
        return 1
    v = 16 // itemsize
    while v > 1 and any(a % v for a in _run_terms(view)):
        v //= 2
    return v


def _run_terms(view: RowView):
    """What a vector run's alignment depends on: Cg and the strides (tile_offsets' VEC)."""
    return view.Cg, view.sN, view.sG, view.sS


# Triton 3.9 and later: where a walk's masked tiles gain from vectors too (see vector).
_VECTOR_WALKS = TRITON_VERSION >= (3, 9)


def vector(view: RowView, itemsize: int, resident: bool = True) -> int:
    """VEC of the kernels (kernels/tiles.py, tile_offsets): the vector run of _vector_run
    where triton's own hints (arguments divisible by 16) would not prove it -- a
    channels_last GroupNorm of 40 channels a group, 80 bytes in bf16, loaded as 16-bit
    scalars; as VEC 8, in 16-byte vectors (GroupNorm 2x1280x16x16 bf16 NHWC forward partials
    pass 4.5 -> 4.4 us, 18 -> 2 loads a thread, ../shared/tools/sass_model.py, triton 3.6);
    1 elsewhere, which keeps every other specialisation as it was.  Walked (chunk > 1)
    tiles only under triton 3.9 and later: under 3.6 ptxas issued a masked walk tile's
    vectors two at a time, where its scalars went out together (GroupNorm 1x128x512x512 bf16
    NHWC, runs of 4, fwd+bwd 179.9 -> 213.6 us), while 3.9 gained (313.5 -> 273.9).  Resident
    tiles take whole 16-byte vectors only: 8-byte ones spilled a split merge pass of
    [32, 2, 64] fp32 tiles with an activation under 3.9 (perf/compile_check.py)."""
    if not (resident or _VECTOR_WALKS):
        return 1
    v = _vector_run(view, itemsize)
    if resident and v * itemsize < 16:
        return 1
    if v > 1 and all(a % 16 == 0 for a in _run_terms(view)):
        return 1
    return v


def _row_config(view: RowView, x: torch.Tensor, spec, pass_) -> RowConfig:
    # "quant": the forward with quantized output, whose row amax must be whole in one
    # program -- the forward's config, never split.
    whole_rows = pass_ == "quant"
    pass_ = "fwd" if whole_rows else pass_
    tuned = _tuned(view, x, spec.name if spec is not None else None, pass_)
    # Weights indexed by element (LayerNorm/RMSNorm) are as long as a row.
    by_element = spec is not None and spec.w_mode == W_BY_ELEMENT
    max_tile = _overrides.get("max_tile", tuned.get("max_tile", MAX_TILE.get(x.dtype, DEFAULT_MAX_TILE)))
    warp_a_row = not (_overrides.keys() | tuned.keys()) and _warp_a_row(view, x, spec, pass_)
    if warp_a_row:
        max_tile = _p2(view.Cg)
    sizes = {"g": view.G, "j": view.Cg, "s": view.S}
    strides = {"g": view.sG, "j": view.sJ, "s": view.sS}
    # Fill the tile along the fastest-moving axis first so that consecutive lanes
    # read consecutive addresses (coalesced, vectorisable loads).
    order = sorted((a for a in sizes if sizes[a] > 1), key=lambda a: strides[a])
    min_g = min(_p2(view.G), _coalescing_rows(view, order, x.element_size()))
    row = _p2(view.Cg) * _p2(view.S)   # the tile that holds one whole row
    if not {"max_tile"} & (_overrides.keys() | tuned.keys()) and not warp_a_row:
        # Rows that are one contiguous run (LayerNorm/RMSNorm, NCHW GroupNorm/InstanceNorm).
        contiguous_rows = (view.S == 1 and view.sJ == 1) or (view.sS == 1 and view.sJ == view.S)
        # Strided rows whose contiguous j runs load as 16-byte vectors (channels_last
        # GroupNorm, VEC): an offset a vector, not an element, so they are as wide; and such
        # a row, resident, needs no neighbour to fill a line (its runs are whole vectors):
        # one launch a forward, not a split's two (GroupNorm 2x1280x16x16 bf16 NHWC fwd+bwd
        # 5 -> 3 launches, 23.3 -> 14.2 us, ../shared/tools/sass_model.py, triton 3.6).
        vector_rows = (not contiguous_rows and view.S > 1
                       and _vector_run(view, x.element_size()) * x.element_size() == 16)
        if vector_rows and row <= RESIDENT_MAX["wide"]:
            min_g = 1
        wide = (contiguous_rows or vector_rows) and (pass_ == "fwd" or not by_element)
        resident = RESIDENT_MAX["wide" if wide else "narrow"]
        resident //= 4 if x.dtype == torch.float64 else 1
        if max_tile < row * min_g <= resident:
            max_tile = row * min_g   # whole rows in one tile: loaded once (see RESIDENT_MAX)
        elif row * min_g > max_tile and pass_ == "bwd" and not contiguous_rows:
            # A strided backward walk keeps x, dy, w, the dw/db sums and a 64-bit offset
            # (two registers) per element: a 4096-element channels_last GroupNorm tile
            # spilled at 16 and at 8 elements a thread (16 warps); 2048 over 8 warps do not.
            max_tile //= 2
    target = _overrides.get("programs", target_programs(x))
    target *= _overrides.get("split_scale", tuned.get("split_scale", 1))
    blocks = {"g": 1, "j": 1, "s": 1}
    if row * min_g <= max_tile:
        # Resident rows: j and s whole, so each row is loaded once; rows fill the rest.
        blocks["j"], blocks["s"] = _p2(view.Cg), _p2(view.S)
        order = ["g"]
    room = max(1, max_tile // (blocks["j"] * blocks["s"]))
    if by_element and 1 < view.rows <= 8 and row * min_g > max_tile:
        # A few long LayerNorm rows: weight and bias are as large as a row, so a tile
        # spans all the rows and each parameter tile is loaded once, not once a row.
        blocks["g"] = _p2(view.rows)
        room = max(1, room // blocks["g"])
        order = [a for a in order if a != "g"]
    for i, a in enumerate(order):
        cap = room
        if a != "g":
            # A walked axis: a block that divides it, or pads it little.
            # Half-precision tiles search for a divisor down to cap / 16: BatchNorm NCHW at
            # 112x112 (S = 12544 = 49 x 256) then walks [16, 256] tiles unmasked, not 1024
            # padded (bf16 fwd+bwd 162 -> 142 us).  fp32 stays at cap / 8: its [16, 256]
            # tiles, four 16-byte loads a thread, had them issued one at a time (265 -> 299).
            # ../shared/tools/sass_model.py, triton 3.6.
            # A strided walked axis (BatchNorm NHWC: positions, C apart) in half precision
            # looks no further than cap / 2: at 32x2048x7x7 the divisor 32 of 1568 made the
            # forward's tiles [32, 32], 2 warps, 6 tiles a program, 23 us in two passes;
            # [32, 128] tiles padding S by 6 % took 14 (fp32 lost by it: 57 -> 65).
            depth = 16 if x.element_size() <= 2 else 8
            if i > 0 and x.element_size() <= 2:
                depth = 2
            cap = _low_waste(sizes[a], cap, max(1, 128 // x.element_size()) if i == 0 else 0,
                             depth)
        if a == "g":
            # Packing rows into one program must not starve the GPU of programs...
            cap = min(cap, _p2(max(1, view.rows // target)))
            # ...unless a warp's loads need several rows to be coalesced (channels_last);
            # the split restores parallelism.
            cap = min(room, max(cap, min_g))
        blocks[a] = min(_p2(sizes[a]), cap)
        room = max(1, room // blocks[a])
    n_gb = triton.cdiv(view.G, blocks["g"])
    n_sb = triton.cdiv(view.S, blocks["s"])
    tiles = triton.cdiv(view.Cg, blocks["j"]) * n_sb
    n_rb = view.N * n_gb
    tile = blocks["g"] * blocks["j"] * blocks["s"]
    # About 16 elements per thread (8 in fp64, whose values take two registers: the
    # per-lane Welford sums of a tile walk hold three values per element and spilled
    # at 16), between 1 and 16 warps (16 only for the resident rows past the default
    # tile, which need the whole SM's register file).
    per_thread = 256 if x.dtype == torch.float64 else 512
    if pass_ == "bwd" and view.memory_format != torch.contiguous_format and tiles > 1:
        per_thread //= 2   # 8 elements a thread in a strided backward walk (see above)
    elif _unaligned_runs(view, x.element_size()):
        # Runs of S contiguous elements that start off a 16-byte boundary (BatchNorm NCHW at
        # 7x7 or 14x14) load element by element, each with its own 64-bit address: 16 a
        # thread took 227-235 registers (one CTA an SM); 8 a thread, twice the warps, halve
        # that (BatchNorm 32x2048x7x7 bf16 fwd+bwd 147 -> 96 us, ../shared/tools/sass_model.py).
        # With 32-bit offsets (offsets_i32) 16 a thread fit two CTAs an SM again (3.6: 88
        # registers at 16 warps, one CTA; 96 -> 50 -> 31.6 us).
        if not offsets_i32(view, blocks["g"], blocks["j"], blocks["s"], x.element_size()):
            per_thread //= 2
    elif (x.element_size() == 4 and tiles > 1 and blocks["s"] * 4 <= 256
          and (view.G % blocks["g"] or view.Cg % blocks["j"] or view.S % blocks["s"])):
        # A masked fp32 walk tile of short rows (at most 256 bytes of S each): its 16
        # elements a thread are four predicated 16-byte loads in four rows, of which ptxas
        # issued two before the first use; at 8 a thread, twice the warps, more are in
        # flight (BatchNorm 32x512x28x28 fp32 NCHW, S = 784 in blocks of 64: fwd+bwd, triton
        # 3.6 / 3.9, 158.8 -> 143.3 / 158.3 -> 126.3 us).  Longer rows lost by it under 3.6
        # (112x112 in blocks of 1024: 266 -> 285).  ../shared/tools/sass_model.py.
        per_thread //= 2
    warps = _overrides.get("num_warps", tuned.get("num_warps", max(1, min(16, tile // per_thread))))
    split = 1
    if whole_rows:
        split = 1   # a row's amax is taken in one program
    elif "split" in _overrides:
        split = _overrides["split"]
    elif n_rb < target:
        # Few, long rows: share each row between programs so the GPU stays busy -- counted
        # in 4-warp programs: programs of 1 or 2 warps get 4 or 2 times the target, or 4
        # programs an SM would leave it 4-8 warps to hide a walk's DRAM latency with
        # (BatchNorm 32x2048x7x7 fp32 NHWC, 2-warp forward: 64 x 9 programs of 6 tiles ->
        # 64 x 17 of 3, fwd+bwd 52.6 -> 47.7 us under triton 3.6, 49.3 -> 44.3 under 3.9;
        # 4-warp programs at twice the target lost: BatchNorm 32x512x28x28 bf16 NCHW 78.6
        # -> 91.1.  ../shared/tools/sass_model.py)...
        # (A GPU's plan only: under the interpreter programs run one after another.)
        if gpu_plan(x):
            target *= max(1, WARPS_A_PROGRAM // warps)
        split = min(MAX_SPLIT, triton.cdiv(target, max(n_rb, 1)))
        # ...but the merge loads BLOCK_G x SPLIT partials at once: past MERGE_PER_THREAD
        # of them per thread they no longer fit in registers and spill (seen in
        # perf/compile_check.py at 32 rows x 128 partials on one warp).
        # A row that merges its group's partials (view.stat_rows: channels_last GroupNorm
        # walked by channel, spec.kernel_view) loads stat_rows x SPLIT of them.
        # (At 4 warps, which _four_an_sm may yet impose on it.)
        per_row = MERGE_PER_THREAD * 32 * (warps if view.stat_rows == 1 else min(warps, 4))
        split = min(split, max(1, per_row // blocks["g"] // view.stat_rows))
    split = max(1, min(split, tiles))
    if (not {"num_warps"} & (_overrides.keys() | tuned.keys())
            and _four_an_sm(view, x, by_element and spec.center, pass_, tiles, blocks["g"], split)):
        warps = min(warps, 4)
    chunk = max(1, triton.cdiv(tiles, split))
    split = max(1, triton.cdiv(tiles, chunk))  # an empty row (an empty rank) walks no tile
    stages = _overrides.get("num_stages", tuned.get("num_stages", 3))
    if warp_a_row:
        warps = 1
    return RowConfig(blocks["g"], blocks["j"], blocks["s"], split, chunk, n_rb, n_gb, n_sb, tiles,
                     warps, stages, WARP_A_ROW_PER_SM if warp_a_row else 4)


def forward_programs(cfg: RowConfig, x: torch.Tensor) -> int:
    """Persistent programs of the forward: enough to fill the device, and no more,
    so that a program walks many row blocks and loads LayerNorm's w and b once."""
    if "programs" in _overrides:
        return max(1, min(cfg.n_rb, _overrides["programs"]))
    return max(1, min(cfg.n_rb, target_programs(x) * cfg.per_sm // 4))


def backward_programs(cfg: RowConfig, x: torch.Tensor, cw: int, w_mode: int = W_BY_ELEMENT) -> int:
    """Persistent programs of the backward: enough to fill the device.  Where each
    program owns a dw/db slot of the whole parameter vector (LayerNorm/RMSNorm),
    few enough that the slots, written once and read once by column_sum, stay
    within 1/DWB_FRACTION of the bytes of x -- but never under two programs per SM
    (target_programs / 2), counting the SPLIT programs that share each row.  Why two: the
    resident backward fits two 8-warp CTAs an SM, and one program an SM left half of
    that idle, walking 125 row blocks in series (LayerNorm 16384x4096 bf16: 164 -> 96 us
    with the column sum, ../shared/tools/sass_model.py); the extra slots cost about 4 %
    of that pass's bytes."""
    if "programs" in _overrides:
        return max(1, min(cfg.n_rb, _overrides["programs"]))
    target = target_programs(x)
    if w_mode != W_BY_ELEMENT:
        return max(1, min(cfg.n_rb, target))
    slot_bytes = 2 * 2 * cw * (8 if x.dtype == torch.float64 else 4)   # written + read
    floor = triton.cdiv(max(1, target // 2), cfg.SPLIT)
    budget = max(floor, x.numel() * x.element_size() // (DWB_FRACTION * max(1, slot_bytes)))
    return max(1, min(cfg.n_rb, target, budget))


def column_sum_blocks(a: int, k: int, target: int = 1):
    """(BLOCK_A, BLOCK_K, num_warps) for summing an [a, k] partials tensor over a: one tile
    of the usual size, columns split over about ``target`` programs (the program count that
    fills the device) but at least 8 wide, one 32-byte sector of fp32, and as many partial
    rows as the tile leaves room for (more rows are looped); 16 elements a thread, up to 8
    warps.  Why so narrow and so many warps: the sum is a few MB read once, bound by its
    latency -- the LayerNorm 8192x768 backward's sum of 264 x 1536 partials took 8.6 us on
    48 programs of 4 warps, 4.3 us on 192 of 8 (../shared/tools/sass_model.py); neighbouring
    programs read the rest of each 128-byte line from L2."""
    tile = _overrides.get("max_tile", DEFAULT_MAX_TILE)
    block_k = min(_p2(k), max(8, _p2(triton.cdiv(k, max(1, target)))), tile)
    block_a = min(_p2(a), max(1, tile // block_k))
    return block_a, block_k, max(1, min(8, block_a * block_k // 512))
