"""What `tritonnorm bench` makes of its rows: one PNG per norm and pass, and a
markdown table of geomean speedups."""
import math
from pathlib import Path

REFERENCES = ("torch", "torch.compile")


def _numel(shape: str) -> int:
    return math.prod(int(d) for d in shape.split("x"))


def plot(rows, out: Path) -> None:
    """GB/s against the size of x, one line per provider, the copy roofline dashed;
    one panel per dtype (rows) and layout (columns)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    for norm, pass_ in sorted({(r["norm"], r["pass"]) for r in rows}):
        sel = [r for r in rows if (r["norm"], r["pass"]) == (norm, pass_)]
        dtypes = sorted({r["dtype"] for r in sel})
        layouts = sorted({r["layout"] for r in sel})
        fig, axes = plt.subplots(len(dtypes), len(layouts), squeeze=False,
                                 figsize=(5 * len(layouts), 3.4 * len(dtypes)))
        for ax, (dtype, layout) in zip(axes.flat, [(d, l) for d in dtypes for l in layouts]):
            cell = [r for r in sel if (r["dtype"], r["layout"]) == (dtype, layout)]
            if not cell:
                continue
            for prov in dict.fromkeys(r["provider"] for r in cell):
                pts = sorted((_numel(r["shape"]), float(r["gbps"])) for r in cell if r["provider"] == prov)
                ax.plot(*zip(*pts), marker="o", label=prov)
            roof = sorted({(_numel(r["shape"]), float(r["copy_gbps"])) for r in cell
                           if r["provider"] == cell[0]["provider"]})
            ax.plot(*zip(*roof), "k--", marker="_", markersize=14, label="copy roofline")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("elements of x")
            ax.set_ylabel("GB/s (minimal bytes)")
            ax.set_title(f"{dtype}, {layout}", fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(f"{norm} {pass_} on {sel[0]['gpu']}", fontsize=10)
        fig.tight_layout()
        path = out / f"{norm}_{pass_.replace('+', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _geomean(xs):
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def _speedup(ratios) -> str:
    """A geomean speedup, or n/a where none can be computed (no case, or a time of 0)."""
    if not ratios or not all(math.isfinite(r) and r > 0 for r in ratios):
        return "n/a"
    g = _geomean(ratios)
    return f"{g:.2f}x" if g >= 0.1 else f"{g:.2g}x"   # interpreter runs: never "0.00x"


def summary(rows) -> str:
    """Markdown: per norm and pass, geomean speedup of tritonnorm against every other
    provider (>1: tritonnorm faster), and its median % of copy."""
    ms = {(r["norm"], r["pass"], r["shape"], r["dtype"], r["layout"], r["provider"]):
          float(r["ms_median"]) for r in rows}
    # torch and torch.compile always (n/a where a run has none: torch.compile runs on a GPU
    # only), then every other provider of the run (apex, liger).
    refs = list(REFERENCES) + sorted({k[5] for k in ms} - set(REFERENCES) - {"tritonnorm"})
    lines = ["| norm | pass | " + " | ".join(f"vs {p}" for p in refs) + " | % of copy |",
             "|---|---|" + "---|" * len(refs) + "---|"]
    overall = {p: [] for p in refs}
    for norm, pass_ in dict.fromkeys((r["norm"], r["pass"]) for r in rows):
        ours = {k[:5]: t for k, t in ms.items() if k[:2] == (norm, pass_) and k[5] == "tritonnorm"}
        cells = []
        for p in refs:
            ratios = [ms[k + (p,)] / t if t > 0 else float("nan")
                      for k, t in ours.items() if k + (p,) in ms]
            overall[p] += ratios
            cells.append(_speedup(ratios))
        pct = sorted(float(r["pct_of_copy"]) for r in rows
                     if (r["norm"], r["pass"], r["provider"]) == (norm, pass_, "tritonnorm"))
        lines.append(f"| {norm} | {pass_} | " + " | ".join(cells)
                     + f" | {pct[len(pct) // 2]:.3g}% |" if pct else " | - |")
    lines.append("| **all** | | " + " | ".join(f"**{_speedup(overall[p])}**" for p in refs) + " | |")
    return "\n".join(lines)
