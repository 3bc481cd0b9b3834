"""Command line: ``tritonnorm check`` and ``tritonnorm tune`` (also ``python -m tritonnorm ...``)."""
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tritonnorm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="run every norm forward and backward here and compare with torch")
    tune = sub.add_parser("tune", help="tune launch configs on this GPU and save them")
    tune.add_argument("--quick", action="store_true", help="one shape per norm")
    tune.add_argument("--norm", action="append", choices=["layer", "rms", "group", "instance", "batch"],
                      help="norms to tune (repeatable; default: all)")
    tune.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16"],
                      help="dtypes to tune (repeatable; default: all)")
    bench = sub.add_parser("bench", help="throughput against torch eager, torch.compile and copy")
    bench.add_argument("--quick", action="store_true", help="two shapes per norm")
    bench.add_argument("--norm", action="append",
                       choices=["batch", "syncbatch", "group", "instance", "layer", "rms"],
                       help="norms to sweep (repeatable; default: all)")
    bench.add_argument("--dtype", action="append", choices=["float32", "bfloat16"])
    bench.add_argument("--out", default="perf/out", help="output directory (CSV, PNG)")
    bench.add_argument("--suite", choices=["sweep", "models", "host", "all"], default="sweep",
                       help="per-norm throughput sweep, model training steps, host time per "
                            "eager call against torch's, or all three")
    bench.add_argument("--budget-s", type=float, help="stop starting new sweep cases after this")
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
            run_models(dtypes, args.out)
        if args.suite in ("host", "all"):
            from .bench_host import run_host
            run_host(args.out)
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


if __name__ == "__main__":
    sys.exit(main())
