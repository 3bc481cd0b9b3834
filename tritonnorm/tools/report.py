"""What `tritonnorm bench` makes of its rows: one PNG per norm and pass, and a
markdown table of geomean ratios of GPU time and of host time."""
import math
from pathlib import Path

REFERENCES = ("torch", "torch.compile")
OURS, OURS_COMPILED = "tritonnorm", "tritonnorm+compile"


def _numel(shape: str) -> int:
    return math.prod(int(d) for d in shape.split("x"))


def number(v):
    """A CSV cell as a finite float, or None ("n/a", empty, inf, nan)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def plot(rows, out: Path) -> list:
    """GB/s (from GPU time) against the size of x, one line per provider, the copy
    roofline dashed; host µs per call where a run has no GPU time (the CPU).  One panel
    per dtype (rows) and layout (columns)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    gpu = any(number(r["gbps"]) for r in rows)
    field, label = ("gbps", "GB/s (minimal bytes, GPU time)") if gpu else (
        "host_us", "host µs per call (no GPU time: not GPU numbers)")
    written = []
    for norm, pass_ in sorted({(r["norm"], r["pass"]) for r in rows}):
        sel = [r for r in rows if (r["norm"], r["pass"]) == (norm, pass_)]
        dtypes = sorted({r["dtype"] for r in sel})
        layouts = sorted({r["layout"] for r in sel})
        fig, axes = plt.subplots(len(dtypes), len(layouts), squeeze=False,
                                 figsize=(5 * len(layouts), 3.4 * len(dtypes)))
        for ax, (dtype, layout) in zip(axes.flat, [(d, l) for d in dtypes for l in layouts]):
            cell = [r for r in sel if (r["dtype"], r["layout"]) == (dtype, layout)]
            for prov in dict.fromkeys(r["provider"] for r in cell):
                pts = sorted((_numel(r["shape"]), number(r[field])) for r in cell
                             if r["provider"] == prov and number(r[field]))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=prov)
            roof = sorted({(_numel(r["shape"]), number(r["copy_gbps"])) for r in cell
                           if number(r["copy_gbps"])})
            if gpu and roof:
                ax.plot(*zip(*roof), "k--", marker="_", markersize=14, label="copy roofline")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("elements of x")
            ax.set_ylabel(label)
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


def _columns(providers):
    """(header, our provider, reference, field) of every ratio column of a run."""
    peers = sorted(set(providers) - set(REFERENCES) - {OURS, OURS_COMPILED})
    return ([("GPU vs torch", OURS, "torch", "gpu_us"),
             ("GPU vs torch.compile", OURS, "torch.compile", "gpu_us"),
             ("compiled vs torch.compile", OURS_COMPILED, "torch.compile", "gpu_us")]
            + [(f"GPU vs {p}", OURS, p, "gpu_us") for p in peers]
            + [("host vs torch", OURS, "torch", "host_us")])


def summary(rows) -> str:
    """Markdown: per norm and pass, the geomean ratio (reference time / ours: > 1 means
    tritonnorm is faster) of GPU time against torch, torch.compile (ours compiled too)
    and every other provider of the run, of host time against torch, and tritonnorm's
    median % of copy.  n/a where a run has no such time (no GPU: no GPU time)."""
    def key(r):
        return r["norm"], r["pass"], r["shape"], r["dtype"], r["layout"]
    t = {(key(r), r["provider"], f): number(r[f]) for r in rows for f in ("gpu_us", "host_us")}
    cols = _columns({r["provider"] for r in rows})
    lines = ["| norm | pass | " + " | ".join(c[0] for c in cols) + " | % of copy |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    overall = {c: [] for c in cols}
    for norm, pass_ in dict.fromkeys((r["norm"], r["pass"]) for r in rows):
        cases = list(dict.fromkeys(key(r) for r in rows if (r["norm"], r["pass"]) == (norm, pass_)))
        cells = []
        for c in cols:
            _, ours, ref, field = c
            pairs = [(t.get((k, ref, field)), t.get((k, ours, field))) for k in cases]
            ratios = [a / b if b else float("nan") for a, b in pairs if a is not None and b is not None]
            overall[c] += ratios
            cells.append(_speedup(ratios))
        pct = sorted(x for x in (number(r["pct_of_copy"]) for r in rows
                                 if (r["norm"], r["pass"], r["provider"]) == (norm, pass_, OURS))
                     if x is not None)
        lines.append(f"| {norm} | {pass_} | " + " | ".join(cells)
                     + (f" | {pct[len(pct) // 2]:.3g}% |" if pct else " | n/a |"))
    lines.append("| **all** | | " + " | ".join(f"**{_speedup(overall[c])}**" for c in cols) + " | |")
    return "\n".join(lines)
