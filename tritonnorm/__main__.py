"""Command line: ``tritonnorm check`` (also ``python -m tritonnorm check``)."""
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
    args = parser.parse_args(argv)
    if args.command == "check":
        _interpreter_without_gpu(argv)
        from .check import run_check
        return 0 if run_check() else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
