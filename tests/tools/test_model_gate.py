"""perf/model_gate.py: the floors the static model's gate holds each sweep case to (issue 23)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def gate():
    spec = importlib.util.spec_from_file_location("model_gate",
                                                  os.path.join(ROOT, "perf", "model_gate.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("norm,shape,dtype,pas,bytes_x,launches", [
    # rows that fit on chip: 2S forward in 1 launch, 3S backward in 2
    ("layer", (16384, 4096), "bfloat16", "fwd+bwd", 5 * 16384 * 4096 * 2, 3),
    ("group", (2, 1280, 16, 16), "bfloat16", "fwd", 2 * 2 * 1280 * 256 * 2, 1),
    # longer rows and BatchNorm training: 3S and 5S, 2 launches each
    ("layer", (2, 262144), "float32", "fwd+bwd", 8 * 2 * 262144 * 4, 4),
    ("batch", (32, 64, 112, 112), "float32", "fwd", 3 * 32 * 64 * 112 * 112 * 4, 2),
    # BatchNorm in eval mode is elementwise
    ("batch_eval", (32, 64, 112, 112), "bfloat16", "fwd", 2 * 32 * 64 * 112 * 112 * 2, 1),
])
def test_floor_is_minimal_bytes_at_4_3_tbps_plus_2_5_us_a_launch(gate, norm, shape, dtype, pas,
                                                                 bytes_x, launches):
    assert gate.floor_us(norm, shape, dtype, pas) == pytest.approx(bytes_x / 4.3e6 + 2.5 * launches)


def test_every_sweep_norm_but_syncbatch_has_cases(gate):
    from tritonnorm.tools.bench import SWEEP
    norms = {c[0] for c in gate.sweep_cases(list(SWEEP))}
    assert norms == set(SWEEP) - {"syncbatch"}
