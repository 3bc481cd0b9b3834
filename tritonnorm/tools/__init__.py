"""tritonnorm's command-line tools: ``check``, ``bench`` and its suites, ``tune``, and the
report and plot writers.

They sit above the library and use it as a user would; nothing in the library
imports them, so ``import tritonnorm`` loads no tool and no matplotlib.  The entry
point is ``tritonnorm.tools.cli.main`` (``tritonnorm ...`` or ``python -m tritonnorm ...``).
"""
