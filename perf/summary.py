"""The one page of a device run (run_device.sh), readable in 30 seconds: summary.md from
the run's CSVs, each part only where its stage left its file.

1. Per norm and pass: the geomean ratio of GPU time against torch eager and torch.compile
   (> 1: tritonnorm faster), of host time against torch, and the median % of copy
   (tritonnorm.tools.report.summary over bench.csv).
2. The 5 cases where tritonnorm's GPU time is worst against torch, with the bound that
   Nsight Compute names for the pass's longest kernel (profile.csv, perf/ncu_profile.py).
3. The model training steps (models.md).

    python3 perf/summary.py perf/out [--title "NVIDIA H200, 2026-11-30, commit abc1234"]
"""
import argparse
import csv
import sys
from pathlib import Path

from tritonnorm.tools.report import number
from tritonnorm.tools.report import summary as sweep_table


def _read(path: Path):
    if not path.exists():
        return None
    with open(path) as f:
        return list(csv.DictReader(f))


def worst(bench, profile, n: int = 5) -> str:
    """Markdown: the ``n`` cases worst against torch eager, and the bound of each."""
    def case(r):
        return r["norm"], r["shape"], r["dtype"], r["layout"], r["pass"]
    t = {(case(r), r["provider"]): number(r["gpu_us"]) for r in bench}
    ratios = sorted((t[(c, "torch")] / us, c, us) for (c, p), us in t.items()
                    if p == "tritonnorm" and us and t.get((c, "torch")))
    longest = {}
    for r in profile or []:
        c, us = case(r), number(r["duration_us"]) or 0.0
        if us >= longest.get(c, (0.0, ""))[0]:
            longest[c] = (us, f"{r['bound']} ({r['kernel'][:30]}, {us:.4g} µs)")
    lines = ["| case | pass | ours µs | torch µs | vs torch | bound (ncu) |",
             "|---|---|---|---|---|---|"]
    for ratio, c, us in ratios[:n]:
        bound = longest.get(c, (0, "not profiled" if profile is not None else "no ncu run"))[1]
        lines.append(f"| {c[0]} {c[1]} {c[2]} {c[3]} | {c[4]} | {us:.4g} | "
                     f"{t[(c, 'torch')]:.4g} | {ratio:.2f}x | {bound} |")
    return "\n".join(lines)


def write(out_dir: Path, title: str, dest: Path = None) -> Path:
    """summary.md from the CSVs in ``out_dir``, written to ``dest`` (default: beside them)."""
    parts = [f"# Device run: {title}", ""]
    bench = _read(out_dir / "bench.csv")
    if bench:
        parts += ["## Per norm and pass (geomean; > 1: tritonnorm faster)", "",
                  sweep_table(bench), "", "## Worst against torch eager (GPU time)", "",
                  worst(bench, _read(out_dir / "profile.csv")), ""]
    else:
        parts += ["No sweep (bench.csv missing).", ""]
    models = out_dir / "models.md"
    parts += ["## Model training steps", "", models.read_text().strip() if models.exists()
              else "No model steps (models.md missing).", ""]
    path = dest or out_dir / "summary.md"
    path.write_text("\n".join(parts))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="the run's output folder (bench.csv, profile.csv, models.md)")
    p.add_argument("--title", default="", help="the GPU, date and commit (default: none)")
    p.add_argument("--dest", default=None, help="where to write (default: OUT_DIR/summary.md)")
    args = p.parse_args(argv)
    print(write(Path(args.out_dir), args.title, args.dest and Path(args.dest)).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
