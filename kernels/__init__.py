"""Device code of tritonnorm: the @triton.jit kernels, installed as tritonnorm.kernels."""
if __name__ == "kernels":
    # Imported as a top-level package: Python runs in a checkout's root (``python -m
    # pytest`` puts it first on sys.path), where this folder shadows Hugging Face's
    # ``kernels``, a dependency of transformers 5, whose ``from kernels import ...`` then
    # fails.  The name goes to that package where it is installed: an import returns what
    # sys.modules holds once the module has run.  tritonnorm imports this folder only as
    # tritonnorm.kernels.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is not None:
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
else:
    from .reduce import column_sum
    from .row_norm import row_norm_fwd
    from .row_norm_bwd import row_norm_bwd

    __all__ = ["column_sum", "row_norm_bwd", "row_norm_fwd"]
