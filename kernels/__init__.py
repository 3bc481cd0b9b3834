"""Device code of tritonnorm: the @triton.jit kernels, installed as tritonnorm.kernels."""
from .reduce import column_sum
from .row_norm import row_norm_fwd
from .row_norm_bwd import row_norm_bwd

__all__ = ["column_sum", "row_norm_bwd", "row_norm_fwd"]
