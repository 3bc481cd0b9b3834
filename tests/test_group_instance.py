"""GroupNorm and InstanceNorm: rows are (n, group) over C/G channels x spatial."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tritonnorm
import tritonnorm.functional as TF
from tritonnorm.spec import channel_layout
from oracle import TOL, assert_matches_torch

# (input shape, num_groups): 2-d input, ragged and prime sizes, 1d/2d/3d
# spatial, G = 1 and G = C, and a group longer than one default tile.
GN_SHAPES = [
    ((3, 6), 3),
    ((2, 6, 5), 3),
    ((3, 8, 5, 7), 4),
    ((2, 4, 9, 9), 1),
    ((2, 6, 13), 6),
    ((2, 6, 3, 4, 5), 2),
]
IN_SHAPES = [(2, 3, 5), (3, 4, 7, 5), (2, 3, 3, 4, 5)]
# Rows longer than one default tile (4096 elements), walked with default tiles.
GN_LONG = [((1, 4, 47, 47), 2), ((2, 3, 9, 23, 21), 1)]
IN_LONG = [(1, 2, 67, 67)]


def with_layouts(cases):
    """Every case in NC* layout, and 4-d/5-d cases in channels_last too."""
    out = []
    for case in cases:
        shape = case[0] if isinstance(case[0], tuple) else case
        out.append((case, "contiguous"))
        if len(shape) >= 4:
            out.append((case, "channels_last"))
    return out


def _layout(x, layout):
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last" and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _format(x):
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim(), torch.contiguous_format)


def _affine(c, affine, dtype, device):
    if not affine:
        return None, None
    return torch.randn(c, dtype=dtype, device=device), torch.randn(c, dtype=dtype, device=device)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("case,layout", with_layouts(GN_SHAPES), ids=str)
def test_group_norm_matches_torch(case, layout, affine, mode, device):
    _group_norm_case(*case, layout, affine, mode, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case,layout", with_layouts(GN_LONG), ids=str)
def test_group_norm_long_groups(case, layout, dtype, device):
    _group_norm_case(*case, layout, True, dtype, device)


def _group_norm_case(shape, groups, layout, affine, dtype, device):
    x = _layout(torch.randn(shape, dtype=dtype, device=device), layout)
    w, b = _affine(shape[1], affine, dtype, device)
    y = assert_matches_torch(lambda x, w, b: TF.group_norm(x, groups, w, b, 1e-5),
                             lambda x, w, b: F.group_norm(x, groups, w, b, 1e-5), [x, w, b])
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=_format(x)), "output must keep channels_last"


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape,layout", with_layouts(IN_SHAPES), ids=str)
def test_instance_norm_matches_torch(shape, layout, affine, mode, device):
    _instance_norm_case(shape, layout, affine, mode, device)


@pytest.mark.parametrize("shape,layout", with_layouts(IN_LONG), ids=str)
def test_instance_norm_long_rows(shape, layout, device):
    _instance_norm_case(shape, layout, True, torch.float32, device)


def _instance_norm_case(shape, layout, affine, dtype, device):
    x = _layout(torch.randn(shape, dtype=dtype, device=device), layout)
    w, b = _affine(shape[1], affine, dtype, device)
    y = assert_matches_torch(lambda x, w, b: TF.instance_norm(x, weight=w, bias=b),
                             lambda x, w, b: F.instance_norm(x, weight=w, bias=b), [x, w, b])
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=_format(x))


IN_MODULES = [(tritonnorm.InstanceNorm1d, nn.InstanceNorm1d, (4, 3, 9)),
              (tritonnorm.InstanceNorm2d, nn.InstanceNorm2d, (4, 3, 5, 6)),
              (tritonnorm.InstanceNorm3d, nn.InstanceNorm3d, (2, 3, 3, 4, 5))]


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("ours_cls,ref_cls,shape", IN_MODULES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_instance_norm_running_stats_over_steps_then_eval(ours_cls, ref_cls, shape, affine, momentum, device):
    kw = dict(affine=affine, track_running_stats=True, momentum=momentum)
    ref = ref_cls(3, **kw).to(device)
    ours = ours_cls(3, **kw).to(device)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(shape, device=device) * (step + 1) + step
        assert_matches_torch(ours, ref, [x])
        torch.testing.assert_close(ours.running_mean, ref.running_mean, msg=f"step {step}")
        torch.testing.assert_close(ours.running_var, ref.running_var, msg=f"step {step}")
        assert torch.equal(ours.num_batches_tracked, ref.num_batches_tracked)
    ours.eval()
    ref.eval()
    assert_matches_torch(ours, ref, [torch.randn(shape, device=device) + 1])
    torch.testing.assert_close(ours.running_mean, ref.running_mean)


@pytest.mark.parametrize("ours_cls,ref_cls,shape", IN_MODULES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_instance_norm_without_batch_dim(ours_cls, ref_cls, shape, device):
    ref = ref_cls(3, affine=True).to(device)
    ours = ours_cls(3, affine=True).to(device)
    ours.load_state_dict(ref.state_dict())
    assert_matches_torch(ours, ref, [torch.randn(shape[1:], device=device)])


@pytest.mark.parametrize("shape,fmt", [((2, 6, 4, 5), torch.channels_last),
                                       ((2, 6, 3, 4, 5), torch.channels_last_3d)])
def test_channels_last_is_read_in_place(shape, fmt, device):
    """NHWC/NDHWC input is addressed through its strides: no hidden copy."""
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    xv, view = channel_layout(x, 3)
    assert xv is x and view.sS == 6 and view.sJ == 1


def test_strided_parameters_are_read_correctly(device):
    x = torch.randn(2, 4, 5, device=device)
    w, b = torch.randn(8, device=device)[::2], torch.randn(8, device=device)[1::2]
    torch.testing.assert_close(TF.group_norm(x, 2, w, b), F.group_norm(x, 2, w, b))
    torch.testing.assert_close(TF.instance_norm(x, weight=w, bias=b), F.instance_norm(x, weight=w, bias=b))


def test_group_norm_module_keeps_torch_state_and_defaults(device):
    g = tritonnorm.GroupNorm(2, 6)
    assert isinstance(g, nn.GroupNorm) and repr(g) == repr(nn.GroupNorm(2, 6))
    assert g.state_dict().keys() == nn.GroupNorm(2, 6).state_dict().keys()
    i = tritonnorm.InstanceNorm2d(3)
    assert isinstance(i, nn.InstanceNorm2d)
    assert not i.affine and not i.track_running_stats and i.running_mean is None


def test_untracked_instance_norm_uses_batch_stats_in_eval(device):
    ours, ref = tritonnorm.InstanceNorm2d(3).eval(), nn.InstanceNorm2d(3).eval()
    x = torch.randn(2, 3, 4, 5, device=device) * 3 + 2
    torch.testing.assert_close(ours(x), ref(x), **TOL[torch.float32])


@pytest.mark.parametrize("norm", ["group", "instance", "batch"])
@pytest.mark.parametrize("first", [0.0, 5.0], ids=["plain-first", "first-5-std-out"])
def test_walked_statistics_stay_accurate_with_a_large_mean(norm, first, tiling, device):
    """Rows walked tile by tile (looped, split) keep per-lane sums shifted by a value of
    the row: with mean 1e3 and std 1, and the row's first element 5 std out, the output
    is within 2x of torch's own fp32 error against the exact (fp64) answer."""
    torch.manual_seed(0)
    x64 = torch.randn(4, 8, 300, dtype=torch.float64, device=device) + 1e3
    x64[:, :, 0] += first
    x = x64.float()
    fns = {"group": lambda t: F.group_norm(t, 4), "instance": lambda t: F.instance_norm(t),
           "batch": lambda t: F.batch_norm(t, None, None, training=True)}
    ours_fns = {"group": lambda t: TF.group_norm(t, 4), "instance": lambda t: TF.instance_norm(t),
                "batch": lambda t: TF.batch_norm(t, None, None, training=True)}
    ref = fns[norm](x.double()).float()
    torch_err = (fns[norm](x) - ref).abs().max()
    assert (ours_fns[norm](x) - ref).abs().max() <= 2 * torch_err + 1e-5


# Channels_last GroupNorm whose groups are not a power of two of channels is walked a row a
# channel, with a group's channel partials merged into its statistics (spec.kernel_view,
# stat_rows).  (shape, num_groups): 10, 3 and 30 channels a group, one sample (its dw/db are
# not the merged partials, as BatchNorm's are), 3-d positions.
GN_BY_CHANNEL = [((2, 30, 5, 7), 3), ((3, 12, 4, 4), 4), ((1, 60, 3, 5), 2),
                 ((2, 18, 3, 4, 5), 3)]


@pytest.fixture
def by_channel(monkeypatch):
    """The by-channel walk for every size and dtype, not only where it pays."""
    import tritonnorm.config as config
    import tritonnorm.spec as spec
    monkeypatch.setattr(spec, "BY_CHANNEL_MIN_S", 1)
    monkeypatch.setattr(spec, "BY_CHANNEL_MAX_ITEMSIZE", 8)
    config.clear_cache()
    yield
    config.clear_cache()


def _stat_rows(x, groups):
    from tritonnorm.spec import GROUP, kernel_view
    return kernel_view(channel_layout(x, groups)[1], GROUP, x.element_size()).stat_rows


@pytest.mark.parametrize("shape,groups", GN_BY_CHANNEL[:1], ids=str)
def test_channels_last_group_norm_walked_by_channel_matches_torch(shape, groups, mode,
                                                                  by_channel, device):
    x = _layout(torch.randn(shape, dtype=mode, device=device) * 2 + 3, "channels_last")
    assert _stat_rows(x, groups) == shape[1] // groups
    _group_norm_case(shape, groups, "channels_last", True, mode, device)


# Every shape with weight and bias, and one without.
@pytest.mark.parametrize("shape,groups,affine",
                         [(*case, True) for case in GN_BY_CHANNEL[1:]] + [(*GN_BY_CHANNEL[1], False)],
                         ids=str)
def test_channels_last_group_norm_walked_by_channel_in_every_shape(shape, groups, affine,
                                                                   tiling, by_channel, device):
    x = _layout(torch.randn(shape, device=device), "channels_last")
    assert _stat_rows(x, groups) == shape[1] // groups
    _group_norm_case(shape, groups, "channels_last", affine, torch.float32, device)


@pytest.mark.parametrize("first", [0.0, 5.0], ids=["plain-first", "first-5-std-out"])
def test_group_statistics_merged_from_channels_stay_accurate_with_a_large_mean(
        first, tiling, by_channel, device):
    """A group's statistics merged from its channels' partials (Chan's formula) keep the
    output within 2x of torch's own fp32 error at mean 1e3, std 1 (the bar the walks meet,
    above).  Not as tight as the padded walk's variance at larger |mean| / std: see
    spec._by_channel, which keeps fp32 off this path."""
    torch.manual_seed(0)
    x64 = torch.randn(2, 30, 6, 7, dtype=torch.float64, device=device) + 1e3
    x64[:, :, 0, 0] += first
    x = x64.float().contiguous(memory_format=torch.channels_last)
    ref = F.group_norm(x.double(), 3).float()
    torch_err = (F.group_norm(x, 3) - ref).abs().max()
    assert (TF.group_norm(x, 3) - ref).abs().max() <= 2 * torch_err + 1e-5


@pytest.mark.parametrize("dtype,shape,groups,stat_rows", [
    (torch.bfloat16, (2, 40, 32, 32), 4, 10),    # half precision, 1024 positions: by channel
    (torch.float16, (2, 60, 16, 8, 8), 2, 30),
    (torch.float32, (2, 40, 32, 32), 4, 1),      # fp32: [groups, Cg, positions] tiles
    (torch.bfloat16, (2, 40, 16, 16), 4, 1),     # 256 positions: the same
    (torch.bfloat16, (2, 32, 32, 32), 4, 1),     # 8 channels a group: a power of two
], ids=str)
def test_channels_last_group_norm_is_walked_by_channel_where_it_pays(dtype, shape, groups,
                                                                     stat_rows, device):
    x = _layout(torch.randn(shape, dtype=dtype, device=device), "channels_last")
    assert _stat_rows(x, groups) == stat_rows
    assert _stat_rows(x.contiguous(), groups) == 1   # NCHW groups are contiguous runs
    if stat_rows > 1:
        _group_norm_case(shape, groups, "channels_last", True, dtype, device)


# Weight and bias, and weight only.  (Not bias only: torch's own CPU group_norm backward
# raises "tensor does not have a device" there, so it cannot be the oracle.)
DWB_PARAMS = {"weight and bias": (True, True), "weight only": (True, False)}


@pytest.mark.parametrize("params", DWB_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,groups", [((2, 30, 5, 7), 3), ((3, 12, 4, 4), 4)], ids=str)
def test_a_split_backward_walked_by_channel_takes_dw_db_from_its_partials(
        shape, groups, dtype, params, by_channel, device, monkeypatch):
    """Split rows walked by channel: the partials pass stores each channel's unweighted sums
    (sum dz * xhat, sum dz), the merge pass weights them by their channel's w into the
    group's sums, and dw, db are every sample's and every split program's partials of a
    channel summed -- no column sum is launched (dispatch._dwb_parts).  Torch is the
    oracle for x's, w's and b's gradients."""
    from tritonnorm import config, dispatch
    sums, bwd = [], []
    monkeypatch.setattr(dispatch, "_run_column_sum", lambda *a: sums.append(a))
    run_bwd = dispatch._run_bwd
    monkeypatch.setattr(dispatch, "_run_bwd", lambda *a: (bwd.append(a), run_bwd(*a)))
    has_w, has_b = DWB_PARAMS[params]
    torch.manual_seed(0)
    x = _layout(torch.randn(shape, dtype=dtype, device=device) * 2 + 1, "channels_last")
    w = torch.empty(shape[1], dtype=dtype, device=device).uniform_(0.5, 1.5) if has_w else None
    b = torch.randn(shape[1], dtype=dtype, device=device) if has_b else None
    assert _stat_rows(x, groups) == shape[1] // groups
    with config.override(max_tile=16, split=2):
        assert_matches_torch(lambda x, w, b: TF.group_norm(x, groups, w, b),
                             lambda x, w, b: F.group_norm(x, groups, w, b), [x, w, b])
    assert not sums
    assert len(bwd) == 2   # split: the partials pass, then the merge that stores dw, db


@pytest.mark.parametrize("activation", ["silu"])
def test_group_norm_walked_by_channel_with_an_activation_and_residual(activation, tiling,
                                                                      by_channel, device):
    """act(group_norm(x) + residual), the epilogue applied in the by-channel merge pass and
    its gradient taken through the merged group sums."""
    x = _layout(torch.randn(2, 30, 5, 7, device=device), "channels_last")
    r = torch.randn_like(x)
    w, b = _affine(30, True, torch.float32, device)
    act = getattr(F, activation)
    assert_matches_torch(
        lambda x, w, b, r: TF.group_norm(x, 3, w, b, residual=r, activation=activation),
        lambda x, w, b, r: act(F.group_norm(x, 3, w, b) + r), [x, w, b, r])


# A channels_last group's channels are one contiguous run, Cg elements long: where Cg and
# the strides are multiples of a 16-byte vector but not of 16 elements, triton's own hints
# cannot prove it and the kernels are told (VEC, config.vector; these tiles are resident,
# which takes whole 16-byte vectors only).
VECTOR_CASES = [
    ((2, 160, 4, 4), 4, "channels_last", torch.bfloat16, 8),   # 40 channels: 80-byte runs
    ((2, 160, 4, 4), 4, "channels_last", torch.float32, 4),
    ((2, 80, 3, 5), 4, "channels_last", torch.bfloat16, 1),    # 20 channels: 8-byte runs
    ((2, 128, 4, 4), 4, "channels_last", torch.bfloat16, 1),   # 32: triton's hints suffice
    ((2, 36, 4, 4), 4, "channels_last", torch.bfloat16, 1),    # 9: no run
    ((2, 160, 4, 4), 4, "contiguous", torch.bfloat16, 1),      # NCHW: j is not contiguous
]


@pytest.mark.parametrize("shape,groups,layout,dtype,vec", VECTOR_CASES, ids=str)
def test_channels_last_group_runs_load_as_vectors(shape, groups, layout, dtype, vec, device):
    from tritonnorm import config
    from tritonnorm.spec import GROUP, kernel_view
    x = _layout(torch.randn(shape, dtype=dtype, device=device), layout)
    view = kernel_view(channel_layout(x, groups)[1], GROUP, x.element_size())
    assert config.vector(view, x.element_size()) == vec
    _group_norm_case(shape, groups, layout, True, dtype, device)


@pytest.mark.parametrize("channels,dtype,resident", [
    (1280, torch.bfloat16, True),    # 40 channels a group: 80-byte runs, 16-byte vectors
    (1280, torch.float32, True),     # 160-byte runs
    (1152, torch.bfloat16, False),   # 36 channels: 8-byte vectors, an offset each 4 elements
], ids=str)
def test_a_vectorised_channels_last_group_fits_one_resident_tile_on_a_gpu_plan(
        channels, dtype, resident, monkeypatch):
    """A channels_last group of 16 x 16 positions whose runs load as 16-byte vectors is one
    resident [1, 64, 256] tile on a GPU's plan, one launch a forward, as an NCHW group is;
    with narrower vectors a tile that size is held to 8192 elements and the group split."""
    from tritonnorm import _runtime, config
    from tritonnorm.spec import GROUP, kernel_view
    monkeypatch.setattr(_runtime, "PLAN_SMS", 132)
    config.clear_cache()
    x = torch.empty(2, channels, 16, 16, dtype=dtype, device="meta").contiguous(
        memory_format=torch.channels_last)
    view = kernel_view(channel_layout(x, 32)[1], GROUP, x.element_size())
    for pass_ in ("fwd", "bwd"):
        cfg = config.row_config(view, x, GROUP, pass_)
        if resident:
            assert (cfg.BLOCK_G, cfg.BLOCK_J, cfg.BLOCK_S, cfg.T, cfg.SPLIT) == (1, 64, 256, 1, 1)
        else:
            assert cfg.T > 1 and cfg.BLOCK_G * cfg.BLOCK_J * cfg.BLOCK_S <= 8192
    config.clear_cache()
