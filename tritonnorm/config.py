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
from ._runtime import INTERPRET, target_programs
from .spec import RowView

# Elements in one [BLOCK_G, BLOCK_J, BLOCK_S] tile.  4096 fp32 accumulators over
# 8 warps is 16 registers per live tile per thread: large enough for wide,
# vectorised loads, small enough that x, xhat, w and dy stay in registers.
# fp64 halves it since every value takes two registers.
MAX_TILE = {torch.float64: 2048}
DEFAULT_MAX_TILE = 4096
# Bound on programs that share one row: the merge step loads all SPLIT partials
# of a row at once, and past a few hundred the partial traffic stops paying.
MAX_SPLIT = 256
# Bound on the backward's per-program dw/db scratch (elements): beyond ~16 MB
# the scratch and its second reduction cost more than extra parallelism gains.
DWB_BUDGET = 1 << 22

# Partials (count, mean, M2) per thread that the split merge may load at once:
# 16 triples are 48 registers, as much as the tile itself holds.
MERGE_PER_THREAD = 16

_overrides: dict = {}


@contextlib.contextmanager
def override(**kw):
    """Force ``max_tile``, ``split``, ``programs``, ``num_warps``, ``num_stages`` or
    ``split_scale`` inside a ``with`` block."""
    old = dict(_overrides)
    _overrides.update(kw)
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(old)


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


_CONFIGS: dict = {}


def row_config(view: RowView, x: torch.Tensor, spec_name: str = None, pass_: str = "fwd") -> RowConfig:
    """The launch config of one pass, memoised: it is a pure function of the view,
    dtype, device, norm, pass and overrides, and is asked for several times per
    step (partials, merge, backward), so the host work is done once per shape."""
    key = (view, x.dtype, x.device, spec_name, pass_, tuple(sorted(_overrides.items())))
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 4096:  # a bound for shape-churning workloads
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = _row_config(view, x, spec_name, pass_)
    return cfg


def clear_cache() -> None:
    """Forget memoised configs (after a new tuning table is written)."""
    _CONFIGS.clear()


def _row_config(view: RowView, x: torch.Tensor, spec_name, pass_) -> RowConfig:
    tuned = _tuned(view, x, spec_name, pass_)
    max_tile = _overrides.get("max_tile", tuned.get("max_tile", MAX_TILE.get(x.dtype, DEFAULT_MAX_TILE)))
    target = _overrides.get("programs", target_programs(x))
    target *= _overrides.get("split_scale", tuned.get("split_scale", 1))
    sizes = {"g": view.G, "j": view.Cg, "s": view.S}
    strides = {"g": view.sG, "j": view.sJ, "s": view.sS}
    # Fill the tile along the fastest-moving axis first so that consecutive lanes
    # read consecutive addresses (coalesced, vectorisable loads).
    order = sorted((a for a in sizes if sizes[a] > 1), key=lambda a: strides[a])
    blocks = {"g": 1, "j": 1, "s": 1}
    room = max_tile
    for a in order:
        cap = room
        if a == "g":
            # Packing rows into one program must not starve the GPU of programs...
            cap = min(cap, _p2(max(1, view.rows // target)))
            if a == order[0]:
                # ...unless rows are the contiguous axis (channels_last IN/BN): then 32
                # adjacent rows keep a warp's loads coalesced; the split restores parallelism.
                cap = min(room, max(cap, 32))
        blocks[a] = min(_p2(sizes[a]), cap)
        room = max(1, room // blocks[a])
    n_gb = triton.cdiv(view.G, blocks["g"])
    n_sb = triton.cdiv(view.S, blocks["s"])
    tiles = triton.cdiv(view.Cg, blocks["j"]) * n_sb
    n_rb = view.N * n_gb
    tile = blocks["g"] * blocks["j"] * blocks["s"]
    # About 16 elements per thread, between 1 and 8 warps.
    warps = _overrides.get("num_warps", tuned.get("num_warps", max(1, min(8, tile // 512))))
    split = 1
    if "split" in _overrides:
        split = _overrides["split"]
    elif n_rb < target:
        # Few, long rows: share each row between programs so the GPU stays busy...
        split = min(MAX_SPLIT, triton.cdiv(target, max(n_rb, 1)))
        # ...but the merge loads BLOCK_G x SPLIT partials at once: past MERGE_PER_THREAD
        # of them per thread they no longer fit in registers and spill (seen in
        # perf/compile_check.py at 32 rows x 128 partials on one warp).
        split = min(split, max(1, MERGE_PER_THREAD * 32 * warps // blocks["g"]))
    split = max(1, min(split, tiles))
    chunk = max(1, triton.cdiv(tiles, split))
    split = max(1, triton.cdiv(tiles, chunk))  # an empty row (an empty rank) walks no tile
    stages = _overrides.get("num_stages", tuned.get("num_stages", 3))
    return RowConfig(blocks["g"], blocks["j"], blocks["s"], split, chunk, n_rb, n_gb, n_sb, tiles,
                     warps, stages)


def backward_programs(cfg: RowConfig, x: torch.Tensor, cw: int) -> int:
    """Persistent programs of the backward: enough to fill the device, few
    enough that their dw/db scratch stays within DWB_BUDGET."""
    if "programs" in _overrides:
        return max(1, min(cfg.n_rb, _overrides["programs"]))
    target = target_programs(x)
    budget = max(target // 4, DWB_BUDGET // max(1, 2 * cw * cfg.SPLIT))
    return max(1, min(cfg.n_rb, target, budget))


def column_sum_blocks(a: int, k: int):
    """(BLOCK_A, BLOCK_K) for summing an [a, k] partials tensor over a: one tile
    of the usual size, at most 32 partial rows tall (more rows are looped) and as
    wide as the rest allows, so few programs cover a long parameter vector."""
    tile = _overrides.get("max_tile", DEFAULT_MAX_TILE)
    block_a = min(32, _p2(a))
    return block_a, min(_p2(k), max(1, tile // block_a))
