"""The static model's gate (issue 23): every default sweep case, forward+backward, against
its bandwidth floor, without a GPU.

For each case of `tritonnorm bench`'s default sweep this runs the static sm_90 model
(`../shared/tools/sass_model.py`, which compiles every launch the case makes and reads its
SASS) and compares the modelled GPU time with the floor of the minimal design:

- S is the bytes of x; the floor is the minimal bytes / 4.3 TB/s (the H200's DRAM
  bandwidth, the model's default) + 2.5 us per launch;
- a row that fits on chip (at most 16,384 elements: the one-tile resident path) moves
  2S forward in 1 launch and 3S backward in 2 (x, dy read, dx written);
- a longer row and BatchNorm training move 3S forward (x read twice, y written) and 5S
  backward (x and dy read twice, dx written) in 2 launches each;
- BatchNorm in eval mode is elementwise: 2S in 1 launch.

A case passes at most 1.5x its floor, with no replicated-broadcast convert and no spill
(the issue's bar). These are model estimates, not GPU measurements.

Usage:  python perf/model_gate.py [--norm N ...] [--pass fwd+bwd] [--json out.json]
          [--sass-model ../shared/tools/sass_model.py] [--python PY]
Run it from the checkout, without TRITON_INTERPRET, in a venv with the project installed
(``~/venv36/bin/python perf/model_gate.py`` for triton 3.6).  Exit status 1 when a case
fails the gate.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

BW_TBPS = 4.3
LAUNCH_US = 2.5
RESIDENT_MAX = 16384  # elements of a row the one-tile path keeps on chip (issue 23's split)
BAR = 1.5
SIZES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}


def sweep_cases(norms):
    """(norm, shape, dtype, layout, passes) of bench's default sweep; syncbatch (a world
    of one runs BatchNorm's kernels) is left to batch."""
    from tritonnorm.tools.bench import SWEEP
    out = []
    for norm in norms:
        if norm not in SWEEP or norm == "syncbatch":
            continue
        for shape, dtype, layout in SWEEP[norm][1]:
            name = str(dtype).replace("torch.", "")
            out.append((norm, shape, name, layout, SWEEP[norm][2]))
    return out


def row_length(norm, shape):
    """Elements one statistic reduces over."""
    spatial = math.prod(shape[2:])
    return {"layer": shape[-1], "rms": shape[-1], "instance": spatial,
            "group": shape[1] // 32 * spatial}.get(norm, shape[0] * spatial)


def floor_us(norm, shape, dtype, pas):
    """The floor of the minimal design, us (see the module docstring)."""
    s = math.prod(shape) * SIZES[dtype]
    if norm == "batch_eval":
        terms = {"fwd": (2, 1)}
    elif norm != "batch" and row_length(norm, shape) <= RESIDENT_MAX:
        terms = {"fwd": (2, 1), "bwd": (3, 2)}
    else:
        terms = {"fwd": (3, 2), "bwd": (5, 2)}
    total = 0.0
    for p in pas.split("+"):
        k, launches = terms[p]
        total += k * s / (BW_TBPS * 1e6) + LAUNCH_US * launches
    return total


def model_norm(norm):
    """sass_model's name for a sweep norm (eval BatchNorm is `batch` fwd in eval mode)."""
    return "batch" if norm == "batch_eval" else norm


def run_model(args, specs):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "out.json")
        cmd = [args.python, args.sass_model, "--project", ".", "--json", path]
        for spec in specs:
            cmd += ["--case", spec]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(path):
            sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
            raise SystemExit(f"sass_model failed ({r.returncode})")
        return {c["spec"]: c for c in json.load(open(path))}


def flags(case):
    """Replicated converts and spills over the case's launches."""
    out = set()
    for launch in case.get("launches", []):
        for d in launch.get("diagnosis", []):
            if "REPLICATED" in d:
                out.add("REPL")
            if "SPILL" in d:
                out.add("SPILL")
    return sorted(out)


def main(argv=None):
    from tritonnorm.tools.bench import SWEEP
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--norm", nargs="*", default=[n for n in SWEEP if n != "syncbatch"])
    p.add_argument("--pass", dest="pas", default="fwd+bwd")
    p.add_argument("--sass-model", default=os.path.join("..", "shared", "tools", "sass_model.py"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--json")
    args = p.parse_args(argv)
    cases = sweep_cases(args.norm)
    specs, rows = [], []
    for norm, shape, dtype, layout, passes in cases:
        pas = args.pas if args.pas in passes else passes[-1]
        if norm == "batch_eval":
            continue  # the model has no eval mode: its floor is listed by batch's fwd row
        spec = f"{model_norm(norm)}:{'x'.join(map(str, shape))}:{dtype}:{layout}:{pas}"
        specs.append(spec)
        rows.append((spec, norm, shape, dtype, pas))
    results = run_model(args, specs)
    failed = 0
    print(f"{'case':48s} {'model':>8s} {'floor':>8s} {'ratio':>6s}  dominant launch  flags")
    out = []
    for spec, norm, shape, dtype, pas in rows:
        case = results.get(spec, {})
        model = case.get("total_us", float("nan"))
        floor = floor_us(norm, shape, dtype, pas)
        ratio = model / floor
        fl = flags(case)
        ok = ratio <= BAR and not fl
        failed += not ok
        worst = max(case.get("launches", []), key=lambda l: l.get("model", {}).get("t_us", 0),
                    default=None)
        dom = f"{worst['name']} {worst['model'].get('t_us', 0):.0f}us" if worst else "-"
        print(f"{spec:48s} {model:8.1f} {floor:8.1f} {ratio:6.2f}  {dom:15s}  "
              f"{' '.join(fl)}{'' if ok else '  FAIL'}")
        out.append({"spec": spec, "model_us": model, "floor_us": floor, "ratio": ratio,
                    "flags": fl, "pass": ok})
    geo = math.exp(sum(math.log(o["ratio"]) for o in out) / max(len(out), 1))
    print(f"\n{len(out) - failed}/{len(out)} within {BAR}x of the floor; geomean model/floor "
          f"{geo:.2f} (model estimates, triton {_triton_version(args.python)})")
    if args.json:
        json.dump(out, open(args.json, "w"), indent=1)
    return 1 if failed else 0


def _triton_version(python):
    return subprocess.run([python, "-c", "import triton; print(triton.__version__)"],
                          capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
