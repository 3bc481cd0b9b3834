"""``python -m tritonnorm ...`` and the ``tritonnorm`` script: a thin entry that imports
the tools (tritonnorm.tools.cli) only when a command runs."""
import sys


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit status."""
    from .tools.cli import main as run
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
