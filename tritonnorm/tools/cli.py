"""The `tritonnorm` command line: check, bench and tune (see DESCRIPTION).

Reached through tritonnorm/__main__.py, which imports this module only when a command runs."""
import argparse
import os
import sys


def _interpreter_without_gpu(argv) -> None:
    """Without a GPU, run under Triton's interpreter.  tritonnorm (and so every
    kernel) is already imported by the time this runs, so re-execute with
    TRITON_INTERPRET=1 set from the start."""
    import torch
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return
    os.environ["TRITON_INTERPRET"] = "1"
    args = sys.argv[1:] if argv is None else list(argv)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "tritonnorm", *args])


DESCRIPTION = """tritonnorm's command line (also `python -m tritonnorm ...`):
  check   run every norm forward and backward here and compare with torch
  bench   GPU time (kernel-only) and host time against torch eager, torch.compile, apex,
          liger and the copy roofline, at real-model shapes; model training steps
  tune    tune launch configs on this GPU and save them
Without a GPU, check and bench run under Triton's interpreter: CPU numbers, not GPU ones."""


def _version() -> str:
    """tritonnorm's version, with the torch and triton it runs on."""
    import torch
    import triton

    import tritonnorm
    return f"tritonnorm {tritonnorm.__version__} (torch {torch.__version__}, triton {triton.__version__})"


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="tritonnorm", description=DESCRIPTION, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=_version(),
                        help="print tritonnorm's version, and torch's and triton's, and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="run every norm forward and backward and compare with torch",
                   description="Run every norm forward and backward on this machine (under "
                               "Triton's interpreter without a GPU) and compare with torch: a "
                               "row per norm, dtype and layout, with the largest error of the "
                               "output and of the gradients against torch's (err y, err "
                               "grads), the dtype's bound (tol) and the wall ms of the case, "
                               "compile included. Exit status 0 when all match. Takes no "
                               "options.")
    tune = sub.add_parser("tune", help="tune launch configs on this GPU and save them",
                          description="Time the config space per shape bucket on this GPU and "
                                      "save the best to the user tuning table (GPU only).")
    tune.add_argument("--quick", action="store_true",
                      help="one shape per norm, the tiles and warps around the defaults "
                           "(default: off, the full grid)")
    tune.add_argument("--norm", action="append", choices=["layer", "rms", "group", "instance", "batch"],
                      help="norms to tune (repeatable; default: all)")
    tune.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16"],
                      help="dtypes to tune (repeatable; default: all)")
    bench = sub.add_parser("bench", help="GPU and host time against torch and peers",
                           description="Benchmark suites; CSV, markdown and PNG files go to --out. "
                                       "Each case gets a GPU time (kernel-only: CUDA-graph replays "
                                       "over inputs rotated through 3x the L2, else torch.profiler; "
                                       "the method is a column) and a host time (µs of one eager "
                                       "call). Without a GPU: host times only, under Triton's "
                                       "interpreter, not GPU numbers.")
    bench.add_argument("--quick", action="store_true",
                       help="sweep: one shape per norm on a GPU (without a GPU the sweep "
                            "always takes one tiny shape per norm) (default: off)")
    bench.add_argument("--norm", action="append",
                       choices=["batch", "batch_eval", "syncbatch", "group", "instance", "layer",
                                "rms"],
                       help="norms to sweep (repeatable; default: all)")
    bench.add_argument("--dtype", action="append", choices=["float32", "bfloat16"],
                       help="dtypes (repeatable; default: float32 and bfloat16)")
    bench.add_argument("--out", default="perf/out",
                       help="output directory for CSV, markdown and PNG (default: perf/out)")
    bench.add_argument("--suite", choices=["sweep", "models", "host", "fused", "all"],
                       default="sweep",
                       help="per-norm sweep at real-model shapes, model training steps "
                            "(ResNet-50, SD-UNet down block, Llama layer, ViT-B block), host "
                            "time per eager call at tiny shapes against torch's, the fused "
                            "calls (add_rms_norm, add_layer_norm, GroupNorm + SiLU, BatchNorm + "
                            "residual + ReLU) against torch's composition, or all four "
                            "(default: sweep)")
    bench.add_argument("--budget-s", type=float, default=None, metavar="SECONDS",
                       help="sweep and models: start no new case or step after this many "
                            "seconds (default: none, all of them)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        _interpreter_without_gpu(argv)
        import torch
        from .bench import SWEEP, run_bench
        from .bench_models import run_models
        dtypes = [getattr(torch, d) for d in args.dtype or ["float32", "bfloat16"]]
        if args.suite in ("sweep", "all"):
            run_bench(args.norm or list(SWEEP), dtypes, args.quick, args.out, args.budget_s)
        if args.suite in ("models", "all"):
            run_models(dtypes, args.out, budget_s=args.budget_s)
        if args.suite in ("host", "all"):
            from .bench_host import run_host
            run_host(args.out)
        if args.suite in ("fused", "all"):
            from .bench_fused import run_fused
            run_fused(dtypes, args.out)
        return 0
    if args.command == "tune":
        from .tune import DTYPES, GRID, tune as run_tune
        return run_tune(args.norm or list(GRID), [DTYPES[d] for d in args.dtype or DTYPES],
                        args.quick)
    if args.command == "check":
        _interpreter_without_gpu(argv)
        from .check import run_check
        return 0 if run_check() else 1
    return 2

