"""The GPU launcher: a plan's first launch per tensor specialisation goes through
triton's ``kernel.run`` (which compiles), later ones launch the compiled binary
directly with the same arguments.  A different dtype or 16-byte alignment of any
tensor is a different specialisation, so it goes through ``kernel.run`` again.
Checked here with stand-ins for triton's kernel and driver; on a GPU every test of
the suite launches through it."""
import torch

from tritonnorm.launch import _direct


class _Binary:
    function, packed_metadata = "fn", "meta"

    def __init__(self, log):
        self.log = log

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        self.log.append(("binary", args))


class _Kernel:
    def __init__(self):
        self.log = []

    def run(self, *args, grid, warmup, **opts):
        self.log.append(("kernel.run", args, grid, opts))
        return _Binary(self.log)


class _Active:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 1234


class _Driver:
    active = _Active()


def _launches(tensors_per_call):
    kernel = _Kernel()
    run, compiled = _direct(kernel, _Driver()), {}
    for tensors in tensors_per_call:
        run(compiled, tensors, (7, 1e-5, 64), (3, 2, 1), {"num_warps": 4})
    return kernel.log


def test_first_launch_compiles_and_later_ones_launch_the_binary_with_the_same_arguments():
    x, w = torch.zeros(64), torch.zeros(8)
    log = _launches([(x, w), (x, w), (w, x)])
    assert [entry[0] for entry in log] == ["kernel.run", "binary", "binary"]
    assert log[0][1:] == ((x, w, 7, 1e-5, 64), (3, 2, 1), {"num_warps": 4})
    grid_and_stream, args = log[1][1][:4], log[1][1][9:]
    assert grid_and_stream == (3, 2, 1, 1234)
    assert log[1][1][4:7] == ("fn", "meta", None)
    assert args == (x, w, 7, 1e-5, 64)


def test_a_new_dtype_or_alignment_is_a_new_specialisation():
    x = torch.zeros(64)
    misaligned = x[1:]                      # 4 bytes past a 16-byte boundary
    assert misaligned.data_ptr() % 16 != 0
    log = _launches([(x,), (misaligned,), (x.double(),), (misaligned,), (x,)])
    assert [entry[0] for entry in log] == ["kernel.run", "kernel.run", "kernel.run",
                                           "binary", "binary"]
