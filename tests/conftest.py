"""Test setup: the interpreter when there is no GPU, the device, the tiling modes."""
import os
import tempfile

import torch

# A fresh inductor cache per run: torch's compiled-graph cache does not key on a
# custom op's schema, so graphs cached by an older tritonnorm call its ops with
# the old arguments.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="tritonnorm-inductor-"))

if not torch.cuda.is_available():
    # Must happen before tritonnorm (and so any @triton.jit) is imported.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

import tritonnorm.config as config  # noqa: E402
from tritonnorm import tables  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The three ways a row is walked: one tile, a loop of tiles, and a loop split
# across programs (persistent programs in the backward).  Small tiles make the
# loop and split paths run on small, fast inputs.
TILINGS = {
    "one-tile": {},
    "looped": {"max_tile": 32},
    "split": {"max_tile": 32, "split": 3, "programs": 2},
}


F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
# (tiling, dtype) pairs every kernel test runs under: each dtype with one tile,
# and the loop and split walks in a full- and a half-precision dtype.
MODES = [("one-tile", F32), ("one-tile", F16), ("one-tile", BF16), ("one-tile", F64),
         ("looped", F32), ("looped", BF16), ("split", F32), ("split", F16)]


# Two modes are marked slow (-m slow) for the default suite's time: float16 in one tile
# (the half-precision path bfloat16 in one tile and float16 in the split walk take too) and
# bfloat16 in the looped walk (the walk float32 takes, with the roundings bfloat16 takes in
# one tile).
SLOW_MODES = {("one-tile", F16), ("looped", BF16)}
_MODE_PARAMS = [pytest.param(m, id=f"{m[0]}-{str(m[1])[6:]}",
                             marks=pytest.mark.slow if m in SLOW_MODES else ())
                for m in MODES]


@pytest.fixture(params=_MODE_PARAMS)
def mode(request):
    """Yields the dtype, with the tiling in force."""
    tiling, dtype = request.param
    with config.override(**TILINGS[tiling]):
        yield dtype


@pytest.fixture(params=list(TILINGS))
def tiling(request):
    with config.override(**TILINGS[request.param]):
        yield request.param


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh, empty tuning-table cache directory (TRITONNORM_CACHE_DIR) for one test."""
    monkeypatch.setenv("TRITONNORM_CACHE_DIR", str(tmp_path))
    tables.device_table.cache_clear()
    yield tmp_path
    tables.device_table.cache_clear()


# Parametrised cases marked slow (-m slow) for the default suite's time (issue 26: under 10
# minutes on 2 cores), each a variant of a case the default run keeps:
# (test name, words its parameter id holds) -> why the kept variant covers it.
SLOW_CASES = {
    ("test_walked_statistics_stay_accurate_with_a_large_mean", ("looped",)):
        "the split walk adds the same shifted sums, then merges them",
    ("test_backward_is_deterministic", ("looped",)):
        "the split backward writes the same per-program dw/db slots, more of them",
    ("test_sync_batchnorm_matches_batchnorm_on_the_full_batch", ("3",)):
        "two ranks exchange and merge the same partials",
    ("test_epilogue_on_walked_and_split_rows", ("batch_norm", "silu-split")):
        "GroupNorm's split silu recomputes z the same way; BatchNorm's split relu stays",
    ("test_epilogue_on_walked_and_split_rows", ("instance_norm", "silu-split")):
        "the same",
    ("test_launched_specialisations_compile_for_sm90", ("fused",)):
        "the fused LayerNorm/RMSNorm launches are the layer slice's kernels with a residual",
}


def pytest_collection_modifyitems(items):
    for item in items:
        words = getattr(getattr(item, "callspec", None), "id", "").split("-")
        for (name, want), _ in SLOW_CASES.items():
            if item.originalname == name and all(
                    w in words or ("-" in w and w in item.callspec.id) for w in want):
                item.add_marker(pytest.mark.slow)
