"""Second-step reductions of per-program partials (deterministic, no atomics)."""
import triton
import triton.language as tl


@triton.jit
def column_sum(
    P_ptr,     # shape (A, K) fp32/fp64 partials, row-major
    Out_ptr,   # shape (K1,) sums of columns [0, K1), in the output dtype
    Out2_ptr,  # shape (K - K1,) sums of columns [K1, K): a separate tensor (e.g. db beside dw)
    A, K, K1,
    BLOCK_A: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """concat(Out, Out2)[k] = sum over a of P[a, k], summed in the partials'
    precision in a fixed order, so repeated runs give bit-identical results."""
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    cmask = cols < K
    acc = tl.zeros([BLOCK_A, BLOCK_K], P_ptr.dtype.element_ty)
    for a0 in range(0, A, BLOCK_A):
        a = a0 + tl.arange(0, BLOCK_A)[:, None]
        m = (a < A) & cmask[None, :]
        acc += tl.load(P_ptr + a.to(tl.int64) * K + cols[None, :], mask=m, other=0.0)
    total = tl.sum(acc, axis=0).to(Out_ptr.dtype.element_ty)
    tl.store(Out_ptr + cols, total, mask=cmask & (cols < K1))
    tl.store(Out2_ptr + (cols - K1), total, mask=cmask & (cols >= K1))
