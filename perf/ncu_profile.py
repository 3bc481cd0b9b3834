"""Nsight Compute profile of tritonnorm's kernels in the sweep's worst and largest cases.

GPU only.  Reads the sweep's bench.csv, picks the cases where tritonnorm's GPU time is
worst against torch eager (``--worst``) and the largest cases (``--largest``), and runs
each pass once under ``ncu --clock-control none`` (the card's clocks are left alone),
the pass's kernels only (``cudaProfilerStart``/``Stop`` around it: process-wide, so the
backward's kernels, launched from autograd's own thread, count).  One CSV row per kernel launch,
with the metric set below and the bound it names; a markdown table beside it.  Where
ncu is missing or refused (it cannot read the counters on every machine), it says so
and exits 0: the run goes on.

Metric set (column: ncu metric):
  duration_us             gpu__time_duration.sum (ns in ncu, µs here)
  dram_pct                dram__throughput.avg.pct_of_peak_sustained_elapsed
  occupancy_pct           sm__warps_active.avg.pct_of_peak_sustained_active (achieved)
  occ_limit_regs          launch__occupancy_limit_registers (blocks per SM the registers allow)
  regs_per_thread         launch__registers_per_thread
  stall_long_sb           smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio
  stall_mio               smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio
  stall_barrier           smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio
  stall_short_sb          smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio
  smem_st_wavefronts      l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum
  sectors_per_ld_request  l1tex__average_t_sectors_per_request_pipe_lsu_mem_global_op_ld.ratio

The bound named per kernel (``bound``), first match:
  DRAM           dram_pct >= 60: past 60 % of peak a kernel streams (a copy reaches ~90 %)
  shared memory  shared stores issued and MIO throttle or short scoreboard the top stall:
                 a layout conversion through shared memory
  latency        long scoreboard the top stall: waiting on global loads, too few in flight
  issue          anything else: instructions, not memory, set the pace

    python3 perf/ncu_profile.py --bench perf/out/bench.csv --out perf/out/profile.csv
    python3 perf/ncu_profile.py --run layer,4096x4096,bfloat16,nchw,fwd   (what ncu runs)

Not ``profile.py``: this folder goes on sys.path when a script here runs (and in some
tests), where a ``profile.py`` would shadow the standard library's, which cProfile, and so
torch._dynamo, imports.
"""
import argparse
import csv
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

METRICS = {
    "duration_us": "gpu__time_duration.sum",
    "dram_pct": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "occupancy_pct": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "occ_limit_regs": "launch__occupancy_limit_registers",
    "regs_per_thread": "launch__registers_per_thread",
    "stall_long_sb": "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
    "stall_mio": "smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio",
    "stall_barrier": "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
    "stall_short_sb": "smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio",
    "smem_st_wavefronts": "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum",
    "sectors_per_ld_request": "l1tex__average_t_sectors_per_request_pipe_lsu_mem_global_op_ld.ratio",
}
COLUMNS = ["norm", "shape", "dtype", "layout", "pass", "why", "kernel", *METRICS, "bound"]
DRAM_BOUND_PCT = 60.0   # see the module docstring


def bound(m: dict) -> str:
    """The bound a kernel's metrics name (module docstring)."""
    if m["dram_pct"] >= DRAM_BOUND_PCT:
        return "DRAM"
    stalls = {k: m[k] for k in ("stall_long_sb", "stall_mio", "stall_barrier", "stall_short_sb")}
    top = max(stalls, key=stalls.get)
    if m["smem_st_wavefronts"] > 0 and top in ("stall_mio", "stall_short_sb"):
        return "shared memory"
    if top == "stall_long_sb":
        return "latency"
    return "issue"


def pick(rows, worst: int, largest: int):
    """[(case, why)]: the ``worst`` cases by GPU time against torch, then the ``largest``
    others; a case is (norm, shape, dtype, layout, pass)."""
    def num(v):
        try:
            return float(v)
        except ValueError:
            return None
    t = {(r["norm"], r["shape"], r["dtype"], r["layout"], r["pass"], r["provider"]): num(r["gpu_us"])
         for r in rows}
    ratios = {k[:5]: t.get(k[:5] + ("torch",)) / v for k, v in t.items()
              if k[5] == "tritonnorm" and v and t.get(k[:5] + ("torch",))}
    out = [(c, f"worst vs torch ({r:.2f}x)") for c, r in sorted(ratios.items(), key=lambda i: i[1])[:worst]]
    size = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}

    def nbytes(c):
        n = 1
        for d in c[1].split("x"):
            n *= int(d)
        return n * size.get(c[2], 4)
    chosen = {c for c, _ in out}
    rest = sorted((c for c in ratios if c not in chosen and c[4] != "bwd"), key=nbytes, reverse=True)
    return out + [(c, "largest") for c in rest[:largest]]


def run_case(spec: str) -> None:
    """The pass ncu profiles: warm up (compile), then once between cudaProfilerStart and Stop."""
    import torch

    import tritonnorm
    from tritonnorm.tools.bench import SWEEP, _inputs, _pass_fns
    norm, shape, dtype, layout, pass_ = spec.split(",")
    shape = tuple(int(d) for d in shape.split("x"))
    layer = SWEEP[norm][0](tritonnorm, shape).to("cuda", getattr(torch, dtype))
    xs, dys = _inputs(shape, getattr(torch, dtype), layout, "cuda", 0)
    fn = _pass_fns(layer, xs[:1], dys[:1], (pass_,))[pass_][0]
    fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def _parse(text: str):
    """ncu --csv --page raw output -> [(kernel, {column: value})] (units row skipped)."""
    lines = text[text.find('"ID"'):] if '"ID"' in text else ""
    rows = list(csv.DictReader(io.StringIO(lines)))
    out = []
    for r in rows[1:]:   # rows[0] holds the units
        try:
            m = {k: float(r[v].replace(",", "")) for k, v in METRICS.items()}
        except (KeyError, ValueError, AttributeError):   # a short line: None for a value
            continue
        m["duration_us"] /= 1e3
        out.append((r.get("Kernel Name", "?"), m))
    return out


def _write(rows, out: Path) -> None:
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    md = ["| case | pass | why | kernel | µs | DRAM % | occupancy % | regs | bound |",
          "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['norm']} {r['shape']} {r['dtype']} {r['layout']} | {r['pass']} | {r['why']} | "
           f"{r['kernel']} | {r['duration_us']} | {r['dram_pct']} | {r['occupancy_pct']} | "
           f"{r['regs_per_thread']} | {r['bound']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


def profile(cases, out: Path, budget_s: float, grace_s: float = 25.0) -> int:
    """Profile ``cases`` until ``budget_s`` (no case starts later; a running one gets
    ``grace_s`` more), writing the files after each case."""
    ncu = shutil.which("ncu")
    if ncu is None:
        print("ncu is not on this machine: no profile (the run goes on)")
        return 0
    rows, start = [], time.perf_counter()
    _write(rows, out)
    for (case, why) in cases:
        left = budget_s + grace_s - (time.perf_counter() - start)
        if time.perf_counter() - start > budget_s:
            print(f"time budget of {budget_s:.0f} s spent: {case} and later cases not profiled")
            break
        cmd = [ncu, "--clock-control", "none", "--print-units", "base", "--profile-from-start", "off",
               "--csv", "--page", "raw", "--metrics", ",".join(METRICS.values()),
               sys.executable, __file__, "--run", ",".join(case)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, left))
        except subprocess.TimeoutExpired:
            print(f"ncu ran past the budget on {case}: stopped there")
            break
        kernels = _parse(done.stdout)
        if not kernels:
            why_not = (done.stderr or done.stdout).strip().splitlines()[-3:]
            print(f"ncu gave no counters for {case} (exit {done.returncode}): {' | '.join(why_not)}")
            if any(s in done.stdout + done.stderr for s in ("ERR_NVGPUCTRPERM", "LibraryNotLoaded",
                                                             "Failed to initialize the profiler")):
                print("ncu is refused on this machine: no profile (the run goes on)")
                break
            continue
        for kernel, m in kernels:
            rows.append(dict(zip(COLUMNS[:5], case), why=why, kernel=kernel[:60],
                             **{k: f"{v:.4g}" for k, v in m.items()}, bound=bound(m)))
        _write(rows, out)
        print(f"profiled {','.join(case)}: {len(kernels)} kernels", flush=True)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default="perf/out/bench.csv", help="the sweep's CSV (default: perf/out/bench.csv)")
    p.add_argument("--out", default="perf/out/profile.csv", help="output CSV; the .md beside it (default: perf/out/profile.csv)")
    p.add_argument("--worst", type=int, default=6, help="cases worst against torch (default: 6)")
    p.add_argument("--largest", type=int, default=4, help="largest other cases (default: 4)")
    p.add_argument("--budget-s", type=float, default=70, help="start no case after this (default: 70)")
    p.add_argument("--run", metavar="CASE", help="norm,shape,dtype,layout,pass: run it once (ncu's target)")
    args = p.parse_args(argv)
    if args.run:
        run_case(args.run)
        return 0
    with open(args.bench) as f:
        cases = pick(list(csv.DictReader(f)), args.worst, args.largest)
    return profile(cases, Path(args.out), args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
