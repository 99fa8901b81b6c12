"""The metrics stage against known answers and against an independent, one-image-at-a-time computation.

The reference here runs the plain torchvision forward (``model(x)``) with cloning hooks on each block's
input, ``bn2`` and ``downsample[1]``, and applies docs/method.md's formulas itself.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torchvision.models.resnet import Bottleneck, ResNet

from repro import metrics, profiles, stimulus
from repro.errors import UserError
from repro.model import ModelSpec, load_model
from repro.store import Store, labels

TAPS = ("I", "B", "O")
TRANSFORMS = ("none", "S", "S_inv")
SIZE = 32
MARGIN = 1e-3  # planted deltas and ratios stay this far from their thresholds



def tiny_profile(**settings):
    return profiles.override(profiles.load("paper"), {
        "model.widths": [8, 8, 16, 16], "model.stem": "small", "model.num_classes": 10,
        "model.weights": "random:0", "model.image_size": SIZE,
        "stimulus.crop": 16, "stimulus.shrink": 16, "stimulus.pad": 8,
        "natural.resize": 36, "natural.crop": SIZE, **settings})


def tiny_model(profile):
    return load_model(ModelSpec.from_profile(profile["model"]))


def named_blocks(model):
    return {f"{stage}.{i}": block for stage in range(1, 5) for i, block in enumerate(getattr(model, f"layer{stage}"))}


def randomize_bn(model, seed):
    """Non-trivial BN statistics and affine parameters, so every tap is a different function."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.copy_(torch.randn(n, generator=generator))
            module.bias.copy_(0.5 * torch.randn(n, generator=generator))
            module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))


# ---------------------------------------------------------------- the independent reference


class Reference:
    """Center values of every tap, from torchvision's own forward with cloning hooks; one image per call."""

    def __init__(self, model, profile):
        self.model = copy.deepcopy(model)
        self.mean = torch.tensor(profile["model"]["normalize_mean"]).view(3, 1, 1)
        self.std = torch.tensor(profile["model"]["normalize_std"]).view(3, 1, 1)
        self.crop, self.shrink, self.pad = (profile["stimulus"][key] for key in ("crop", "shrink", "pad"))
        self.saved = {}
        for name, block in named_blocks(self.model).items():
            block.register_forward_pre_hook(self._keep(name, "input", pre=True))
            block.bn2.register_forward_hook(self._keep(name, "bn2"))
            if block.downsample is not None:
                block.downsample[1].register_forward_hook(self._keep(name, "downsample"))

    def _keep(self, name, what, pre=False):
        if pre:
            return lambda module, args: self.saved.__setitem__((name, what), args[0].clone())
        return lambda module, args, output: self.saved.__setitem__((name, what), output.clone())

    def tensor(self, image_uint8):
        x = torch.tensor(image_uint8).permute(2, 0, 1).float() / 255.0
        return ((x - self.mean) / self.std)[None]

    def transform(self, x, name):
        if name == "S":
            top = (x.shape[-1] - self.crop) // 2
            center = x[..., top:top + self.crop, top:top + self.crop]
            return F.interpolate(center, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        if name == "S_inv":
            small = F.interpolate(x, size=(self.shrink, self.shrink), mode="bilinear", align_corners=False)
            return F.pad(small, (self.pad,) * 4, mode="reflect")
        return x

    def taps(self, x):
        """{(block, tap): center values of all channels} for one normalized image."""
        self.saved.clear()
        with torch.no_grad():
            self.model(x)
        values, previous_output = {}, None
        for name, block in named_blocks(self.model).items():
            summand = self.saved[(name, "bn2")]
            identity = self.saved[(name, "downsample")] if block.downsample is not None else self.saved[(name, "input")]
            output = summand + identity
            if block.downsample is not None:
                input_summand = identity
            else:
                input_summand = previous_output if previous_output is not None else identity
            for tap, tensor in (("I", input_summand), ("B", summand), ("O", output)):
                values[(name, tap)] = tensor[0, :, tensor.shape[2] // 2, tensor.shape[3] // 2].double().numpy()
            previous_output = output
        return values

    def image_taps(self, image_uint8, transform="none"):
        return self.taps(self.transform(self.tensor(image_uint8), transform))


def reference_metrics(r, clamp=5.0, low=2 / 3, high=1.5):
    """docs/method.md's formulas on r[(tap, source, transform)] (scalars of one channel)."""
    o_i, o_b = r[("O", "I", "none")], r[("O", "B", "none")]
    if o_b <= 0:
        mix = clamp
    elif o_i <= 0:
        mix = 0.0
    else:
        mix = min(o_i / o_b, clamp)
    failed = o_i <= 0 and o_b <= 0
    up = r[("B", "I", "S")] - max(r[("B", "I", "none")], 0.0)
    down = r[("I", "B", "S_inv")] - max(r[("I", "B", "none")], 0.0)
    scale_metric = up / r[("B", "B", "none")] + down / r[("I", "I", "none")]
    mix_ok = low < mix < high and not failed
    return {"mix": mix, "up_delta": up, "down_delta": down, "scale_metric": scale_metric, "mix_ok": mix_ok,
            "up_ok": up > 0, "down_ok": down > 0, "invariant_naturally": mix_ok and up > 0,
            "invariant_interpreting": mix_ok and up > 0 and down > 0, "failed_fz": failed}


# ---------------------------------------------------------------- writing input groups


def write_group(store, name, dataset):
    store.declare(name, dataset, {}, settings={"written_by": "test"})
    store.write_unit(name, "all", dataset)
    store.finish(name)


def widths(model, blocks):
    return {block: named_blocks(model)[block].bn2.num_features for block in blocks}


def write_fz(store, model, images, channels=None, seeds=None):
    """images: {block: {tap: uint8 [one per valid channel, SIZE, SIZE, 3]}} → the ``fz`` group (seed 0);
    with ``seeds``, a list of such dicts, one per seed.

    ``channels`` is the channel coord (default 0 .. widest − 1), as ``repro fz --channels`` stores it.
    """
    per_seed = images if seeds is not None else [images]
    seeds = [0] if seeds is None else list(seeds)
    blocks = list(per_seed[0])
    width = widths(model, blocks)
    channels = np.arange(max(width.values())) if channels is None else np.asarray(channels)
    cube = np.zeros((len(seeds), len(blocks), 3, len(channels), SIZE, SIZE, 3), dtype=np.uint8)
    valid = channels[None, :] < np.array([width[block] for block in blocks])[:, None]
    for s, one in enumerate(per_seed):
        for b, block in enumerate(blocks):
            for t, tap in enumerate(TAPS):
                cube[s, b, t, valid[b]] = one[block][tap][: valid[b].sum()]
    write_group(store, "fz", xr.Dataset(
        {"image": (("seed", "block", "tap", "channel", "y", "x", "rgb"), cube), "valid": (("block", "channel"), valid)},
        coords={"seed": np.array(seeds), "block": labels(blocks), "tap": labels(TAPS), "channel": channels}))


def new_store(tmp_path, profile, record):
    return Store.create_or_open(tmp_path / "run.zarr", profile, record)


def random_images(rng, n):
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def pool_images(rng, n):
    """Images with structure at several scales (blocky noise of 2..32 cells a side)."""
    images = []
    for _ in range(n):
        cells = int(rng.choice([2, 4, 8, 16, 32]))
        low = rng.integers(0, 256, (cells, cells, 3))
        images.append(np.kron(low, np.ones((SIZE // cells, SIZE // cells, 1))).astype(np.uint8))
    return np.stack(images)


def random_fz(rng, model, blocks):
    width = widths(model, blocks)
    return {block: {tap: random_images(rng, width[block]) for tap in TAPS} for block in blocks}


# ---------------------------------------------------------------- transforms and formulas


def test_scale_transforms_match_plain_interpolation():
    profile = tiny_profile()
    scale = stimulus.ScaleTransforms.from_profile(profile)
    reference = Reference(tiny_model(profile)[0], profile)
    x = torch.randn(2, 3, SIZE, SIZE)
    for name in TRANSFORMS:
        assert torch.allclose(scale.apply(name, x), reference.transform(x, name), atol=1e-6)
    assert scale.scale_down(x).shape == x.shape
    smooth = stimulus.ScaleTransforms.from_profile(profiles.override(profile, {"stimulus.antialias": True}))
    assert not torch.allclose(smooth.scale_down(x), scale.scale_down(x))  # S⁻¹ shrinks: antialiasing matters
    with pytest.raises(ValueError):
        scale.apply("rotate", x)


def test_mix_ratio_conventions():
    o_input = np.array([1.0, -1.0, -1.0, 10.0, 1.0, np.nan, 0.0, 1.5])
    o_block = np.array([0.0, 2.0, -1.0, 1.0, 2.0, 1.0, 0.0, 1.0])
    expected = np.array([5.0, 0.0, 5.0, 5.0, 0.5, np.nan, 5.0, 1.5])
    np.testing.assert_array_equal(metrics.mix_ratio(o_input, o_block, 5.0), expected)


def test_channel_metrics_strict_mix_bounds_and_failed_channels():
    # Channel 0: M = 1.5 exactly (not < 1.5); channel 1: M = 1.2; channel 2: both O <= 0.
    values = np.ones((3, 3, 3, 3))
    o = TAPS.index("O")
    values[o, :, TAPS.index("I"), 0] = [1.5, 1.2, -1.0]
    values[o, :, TAPS.index("B"), 0] = [1.0, 1.0, -2.0]
    response = xr.DataArray(values, dims=("tap", "channel", "source", "transform"),
                            coords={"tap": list(TAPS), "channel": [0, 1, 2], "source": list(TAPS),
                                    "transform": list(TRANSFORMS)})
    result = metrics.channel_metrics(response, metrics.metrics_settings(profiles.load("paper")))
    np.testing.assert_allclose(result["mix"].values, [1.5, 1.2, 5.0])
    assert result["mix_ok"].values.tolist() == [False, True, False]
    assert result["failed_fz"].values.tolist() == [False, False, True]


def test_block_weights_use_the_last_bn_and_conv_of_a_bottleneck():
    model = ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=4, num_classes=10)
    block = model.layer1[0]
    with torch.no_grad():
        block.bn3.weight.copy_(-torch.arange(float(block.bn3.num_features)))
    bn_abs, conv_mean_abs = metrics.block_weights(model, "1.0")
    np.testing.assert_array_equal(bn_abs, np.arange(float(block.bn3.num_features)))
    np.testing.assert_allclose(conv_mean_abs, block.conv3.weight.detach().abs().mean((1, 2, 3)).numpy(), rtol=1e-6)


# ---------------------------------------------------------------- the whole stage, random weights


@pytest.mark.filterwarnings("ignore::repro.metrics.FailedFZWarning")  # random stimuli fail some channels
def test_every_metric_equals_the_reference_on_random_weights(tmp_path):
    rng = np.random.default_rng(0)
    profile = tiny_profile()
    model, record = tiny_model(profile)
    randomize_bn(model, 1)
    blocks = ["1.1", "2.0", "3.1", "4.0"]  # simple and downsample blocks; centers at 16, 8, 4 and 2 px
    natural_blocks = ["1.1", "2.0", "3.1"]
    fz = random_fz(rng, model, blocks)
    store = new_store(tmp_path, profile, record)
    write_fz(store, model, fz)

    n_images, n = 24, 16
    cache = rng.integers(0, 256, (n_images, 36, 36, 3), dtype=np.uint8)
    activation = rng.normal(size=(len(natural_blocks), 3, n, n_images)).astype(np.float32)
    top = np.stack([rng.permutation(n_images)[:9] for _ in range(len(natural_blocks) * 3 * n)])
    top = top.reshape(len(natural_blocks), 3, n, 9)
    write_group(store, "natural", xr.Dataset(
        {"activation": (("block", "tap", "channel", "image"), activation),
         "top_images": (("block", "tap", "channel", "rank"), top)},
        coords={"block": labels(natural_blocks), "tap": labels(TAPS), "channel": np.arange(n),
                "image": np.arange(n_images)}))
    side = np.full(n_images, 36, dtype=np.int32)  # square sources: Resize(36) keeps them 36 x 36
    write_group(store, "image_cache", xr.Dataset(
        {"pixels": (("image", "y", "x", "rgb"), cache), "resized_height": ("image", side),
         "resized_width": ("image", side), "corrupt": ("image", np.zeros(n_images, bool))},
        coords={"image": np.arange(n_images)}))

    metrics.run(store, model, record, profile)
    responses = store.dataset("responses").sel(seed=0)["response"].load()
    result = store.dataset("metrics").sel(seed=0).load()
    assert result.attrs["complete"] and result.attrs["top9_available"]
    assert result.attrs["top9_blocks"] == natural_blocks
    assert result.attrs["stage"] == "metrics" and result.attrs["weights_sha256"] == record["weights_sha256"]

    reference = Reference(model, profile)
    natural_taps = {(i, t): reference.taps(reference.transform(reference.tensor(
        cache[i, 2:34, 2:34]), t)) for i in range(n_images) for t in TRANSFORMS}
    width = widths(model, blocks)
    per_set = [name for name in result.data_vars if result[name].dims == ("block", "channel", "stimulus_set")]
    rows = {(block, stimulus_set): result[per_set].sel(block=block, stimulus_set=stimulus_set).to_dataframe()
            for block in blocks for stimulus_set in ("fz", "top9")}
    for block in blocks:
        module = named_blocks(model)[block]
        for stimulus_set in (["fz", "top9"] if block in natural_blocks else ["fz"]):
            for c in range(width[block]):
                r = {}
                for source in TAPS:
                    for transform in TRANSFORMS:
                        if stimulus_set == "fz":
                            seen = [reference.image_taps(fz[block][source][c], transform)]
                        else:
                            ranks = top[natural_blocks.index(block), TAPS.index(source), c]
                            seen = [natural_taps[(i, transform)] for i in ranks]
                        for tap in TAPS:
                            r[(tap, source, transform)] = np.mean([v[(block, tap)][c] for v in seen])
                stored = responses.sel(block=block, channel=c, stimulus_set=stimulus_set)
                stored = stored.transpose("tap", "source", "transform").values
                expected_cube = np.array([[[r[(tap, source, transform)] for transform in TRANSFORMS]
                                           for source in TAPS] for tap in TAPS])
                np.testing.assert_allclose(stored, expected_cube, rtol=1e-4, atol=1e-4)
                expected = reference_metrics(r)
                got = rows[(block, stimulus_set)].iloc[c]
                for name, value in expected.items():
                    if isinstance(value, (bool, np.bool_)):
                        assert bool(got[name]) == value, (block, c, stimulus_set, name)
                    else:
                        # SM divides by B_c(X̂_B) and I_c(X̂_I), which amplify float32 rounding when small.
                        rtol = 1e-2 if name == "scale_metric" else 1e-3
                        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=1e-4, err_msg=f"{block} {c} {name}")
        got = result.sel(block=block)
        np.testing.assert_allclose(got["bn2_weight_abs"][: width[block]], module.bn2.weight.abs().numpy(), rtol=1e-6)
        np.testing.assert_allclose(got["conv2_weight_mean_abs"][: width[block]],
                                   module.conv2.weight.abs().mean((1, 2, 3)).numpy(), rtol=1e-5)
        assert got["valid"].values.tolist() == [c < width[block] for c in range(n)]
        assert bool(got["downsample"]) == (module.downsample is not None)
        assert np.isnan(got["mix"].values[width[block]:]).all()
        if block in natural_blocks:
            b = natural_blocks.index(block)
            for c in range(width[block]):
                i_c, b_c = activation[b, 0, c], activation[b, 1, c]
                rho = pd.Series(i_c[i_c > 0]).corr(pd.Series(b_c[i_c > 0]), method="spearman")
                np.testing.assert_allclose(float(got["tuning_rho"][c]), rho, rtol=1e-5)
        else:
            assert np.isnan(got["tuning_rho"]).all()
            assert np.isnan(responses.sel(block=block, stimulus_set="top9")).all()


# ---------------------------------------------------------------- planted weights and stimuli


def pool_taps(reference, pool, block):
    """Per pool image: {(tap, transform): all channels' center values at ``block``}."""
    return [{(tap, t): values[(block, tap)] for t in TRANSFORMS
             for values in [reference.image_taps(image, t)] for tap in TAPS} for image in pool]


@pytest.mark.filterwarnings("ignore::repro.metrics.FailedFZWarning")  # random stimuli fail some channels
def test_zeroed_summands_give_pure_skip_and_pure_overwrite(tmp_path):
    """bn2 weight and bias zero → B ≡ 0, O = ReLU(I): with X̂_B an image I rejects, M = 5 (skip).
    downsample BN weight and bias zero → I ≡ 0, O = B: with X̂_I an image B rejects, M = 0 (overwrite).
    (An FZ of a constant-zero tap is arbitrary, so the test picks X̂ as the pool image the surviving
    summand likes least; the FZ of the live summand is the pool image it likes most.)"""
    rng = np.random.default_rng(1)
    profile = tiny_profile()
    model, record = tiny_model(profile)
    randomize_bn(model, 2)
    # The live summand (I of 1.1, B of 2.0) does not depend on the weights zeroed below.
    reference = Reference(model, profile)
    pool = pool_images(rng, 48)
    fz = random_fz(rng, model, ["1.1", "2.0"])
    chosen = {}
    for block, live in (("1.1", "I"), ("2.0", "B")):
        values = np.stack([reference.image_taps(image)[(block, live)] for image in pool])
        # Channels the pool can both drive and suppress; two of them get the zeroed other summand.
        two_sided = np.flatnonzero((values.max(0) > MARGIN) & (values.min(0) < -MARGIN))
        assert len(two_sided) >= 2
        chosen[block] = two_sided[:2].tolist()
        dead = "B" if live == "I" else "I"
        for c in chosen[block]:
            fz[block][live][c], fz[block][dead][c] = pool[values[:, c].argmax()], pool[values[:, c].argmin()]
    skip_channels, overwrite_channels = chosen["1.1"], chosen["2.0"]
    with torch.no_grad():
        for c in skip_channels:
            named_blocks(model)["1.1"].bn2.weight[c] = 0
            named_blocks(model)["1.1"].bn2.bias[c] = 0
        for c in overwrite_channels:
            named_blocks(model)["2.0"].downsample[1].weight[c] = 0
            named_blocks(model)["2.0"].downsample[1].bias[c] = 0
    store = new_store(tmp_path, profile, record)
    write_fz(store, model, fz)
    metrics.run(store, model, record, profile)

    result = store.dataset("metrics").sel(seed=0).sel(stimulus_set="fz").load()
    response = store.dataset("responses").sel(seed=0)["response"].sel(stimulus_set="fz").load()
    skip = result.sel(block="1.1", channel=skip_channels)
    np.testing.assert_array_equal(skip["mix"], 5.0)
    assert not skip["failed_fz"].any() and not skip["mix_ok"].any()
    block_1_1 = response.sel(block="1.1", channel=skip_channels)
    np.testing.assert_array_equal(block_1_1.sel(tap="B"), 0.0)
    # A simple block adds its (post-ReLU) input, while I is the previous block's pre-ReLU sum.
    np.testing.assert_allclose(block_1_1.sel(tap="O"), np.maximum(block_1_1.sel(tap="I"), 0), atol=1e-6)

    overwrite = result.sel(block="2.0", channel=overwrite_channels)
    np.testing.assert_array_equal(overwrite["mix"], 0.0)
    assert not overwrite["failed_fz"].any() and not overwrite["invariant_naturally"].any()
    block_2_0 = response.sel(block="2.0", channel=overwrite_channels)
    np.testing.assert_array_equal(block_2_0.sel(tap="I"), 0.0)
    np.testing.assert_allclose(block_2_0.sel(tap="O"), block_2_0.sel(tap="B"), atol=1e-6)

    # Without a natural group, top9 stays NaN and the attrs say why.
    assert np.isnan(store.dataset("responses").sel(seed=0)["response"].sel(stimulus_set="top9")).all()
    assert np.isnan(store.dataset("metrics").sel(seed=0)["mix"].sel(stimulus_set="top9")).all()
    attrs = store.dataset("metrics").sel(seed=0).attrs
    assert attrs["top9_available"] is False and "natural" in attrs["top9_note"]


@pytest.mark.filterwarnings("ignore::repro.metrics.FailedFZWarning")  # random stimuli fail some channels
def test_planted_scale_channel_passes_and_its_neighbours_do_not(tmp_path):
    """In block 2.1 the planted channel gets stimuli passing mix, up and down; the channel before it
    passes mix and down but not up; the channel after it passes mix and up but not down (so it is
    invariant for "Naturally computed" only); every other channel gets an X̂_I that fails up."""
    rng = np.random.default_rng(2)
    profile = tiny_profile()
    model, record = tiny_model(profile)
    randomize_bn(model, 3)
    block = "2.1"
    width = widths(model, [block])[block]
    reference = Reference(model, profile)
    pool = pool_images(rng, 96)
    seen = pool_taps(reference, pool, block)

    def column(tap, transform):
        return np.stack([v[(tap, transform)] for v in seen])  # [pool image, channel]

    up = column("B", "S") - np.maximum(column("B", "none"), 0)
    down = column("I", "S_inv") - np.maximum(column("I", "none"), 0)
    o = column("O", "none")

    def pair(c, up_sign, down_sign):
        """(X̂_I, X̂_B) pool indices with the wanted signs of up/down and M well inside (2/3, 3/2), or None."""
        inputs = np.flatnonzero((up_sign * up[:, c] > MARGIN) & (o[:, c] > MARGIN))
        block_fzs = np.flatnonzero((down_sign * down[:, c] > MARGIN) & (o[:, c] > MARGIN))
        if not len(inputs) or not len(block_fzs):
            return None
        ratio = np.abs(np.log(o[inputs, c][:, None] / o[block_fzs, c][None, :]))
        i, b = np.unravel_index(ratio.argmin(), ratio.shape)
        return (inputs[i], block_fzs[b]) if ratio[i, b] < np.log(1.4) else None

    roles = {-1: (-1, 1), 0: (1, 1), 1: (1, -1)}  # offset from the planted channel → (up sign, down sign)
    planted = next(c for c in range(1, width - 1)
                   if all(pair(c + offset, *signs) is not None for offset, signs in roles.items()))
    fz = random_fz(rng, model, [block])
    for c in range(width):
        if c - planted in roles:
            i, b = pair(c, *roles[c - planted])
        else:
            i, b = np.flatnonzero(up[:, c] < -MARGIN)[0], 0
        fz[block]["I"][c], fz[block]["B"][c] = pool[i], pool[b]
    store = new_store(tmp_path, profile, record)
    write_fz(store, model, fz)
    metrics.run(store, model, record, profile)

    result = store.dataset("metrics").sel(seed=0).sel(block=block, stimulus_set="fz").load()
    assert result["invariant_interpreting"].values[:width].tolist() == [c == planted for c in range(width)]
    assert result["invariant_naturally"].values[:width].tolist() == [c in (planted, planted + 1) for c in range(width)]
    assert result["mix_ok"].sel(channel=[planted - 1, planted, planted + 1]).all()
    assert not result["up_ok"].sel(channel=planted - 1) and not result["down_ok"].sel(channel=planted + 1)
    planted_row = result.sel(channel=planted)
    assert planted_row["up_delta"] > 0 and planted_row["down_delta"] > 0
    r = {(tap, s, t): reference.image_taps(fz[block][s][planted], t)[(block, tap)][planted]
         for tap in TAPS for s in TAPS for t in TRANSFORMS}
    np.testing.assert_allclose(float(planted_row["scale_metric"]), reference_metrics(r)["scale_metric"], rtol=1e-3)


def test_failed_fz_is_flagged_counted_and_warned(tmp_path):
    rng = np.random.default_rng(3)
    profile = tiny_profile()
    model, record = tiny_model(profile)
    with torch.no_grad():  # B ≡ -1000 for channel 6: no image drives O above zero
        named_blocks(model)["1.1"].bn2.weight[6] = 0
        named_blocks(model)["1.1"].bn2.bias[6] = -1000
    store = new_store(tmp_path, profile, record)
    write_fz(store, model, random_fz(rng, model, ["1.1"]))
    with pytest.warns(metrics.FailedFZWarning, match=r"block 1\.1 \(fz, seed 0\).*\b6\b"):
        metrics.run(store, model, record, profile)
    result = store.dataset("metrics").sel(seed=0).sel(block="1.1", stimulus_set="fz").load()
    row = result.sel(channel=6)
    assert bool(row["failed_fz"]) and float(row["mix"]) == 5.0
    assert not row["mix_ok"] and not row["invariant_naturally"] and not row["invariant_interpreting"]
    counts = store.dataset("metrics").sel(seed=0).attrs["failed_fz_count"]
    assert counts["1.1"]["fz"] == int(result["failed_fz"].sum()) >= 1

    # A rerun finds every unit done and computes nothing.
    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a done unit")

    original = metrics.fz_responses
    metrics.fz_responses = refuse
    try:
        metrics.run(store, model, record, profile)
    finally:
        metrics.fz_responses = original


@pytest.mark.filterwarnings("ignore::repro.metrics.FailedFZWarning")  # random stimuli fail some channels
def test_channel_subset_through_the_command_line(tmp_path):
    """FZs of a few channels only (``repro fz --channels``); ``repro metrics --store`` reads them by label."""
    from click.testing import CliRunner

    from repro.cli import main

    rng = np.random.default_rng(5)
    profile = tiny_profile()
    model, record = tiny_model(profile)
    channels = [1, 6, 7]
    fz = {"2.0": {tap: random_images(rng, len(channels)) for tap in TAPS}}
    store = new_store(tmp_path, profile, record)
    write_fz(store, model, fz, channels=channels)
    outcome = CliRunner().invoke(main, ["metrics", "--store", str(store.path)])
    assert outcome.exit_code == 0, outcome.output

    reference = Reference(model, profile)
    response = store.dataset("responses").sel(seed=0)["response"].sel(block="2.0", stimulus_set="fz").load()
    result = store.dataset("metrics").sel(seed=0).sel(block="2.0").load()
    assert list(response["channel"].values) == channels
    for position, c in enumerate(channels):
        for source in TAPS:
            seen = reference.image_taps(fz["2.0"][source][position], "S_inv")
            for tap in TAPS:
                np.testing.assert_allclose(response.sel(channel=c, tap=tap, source=source, transform="S_inv"),
                                           seen[("2.0", tap)][c], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(result["bn2_weight_abs"], named_blocks(model)["2.0"].bn2.weight[channels].abs())


def test_missing_or_incomplete_fz_is_a_clear_error(tmp_path):
    profile = tiny_profile()
    model, record = tiny_model(profile)
    store = new_store(tmp_path, profile, record)
    with pytest.raises(UserError, match="no 'fz' group"):
        metrics.run(store, model, record, profile)
    write_fz(store, model, random_fz(np.random.default_rng(4), model, ["1.1"]))
    with pytest.raises(UserError, match="no FZs"):
        metrics.run(store, model, record, profile, blocks=["3.1"])
    for marker in (store.path / "fz" / "_units").glob("*/zarr.json"):  # no FZ unit done
        marker.unlink()
    with pytest.raises(UserError, match="FZs of all three taps done"):
        metrics.run(store, model, record, profile)


def test_metrics_of_the_channels_whose_fzs_exist_equal_those_of_a_full_run(tmp_path, capsys):
    """FZs of channels 0-5 only (FZs are made by name, so exactly those): their metrics are the full run's, the
    rest are missing and listed in one line; once the other FZs exist, the rerun makes the block whole and equal."""
    from repro import fz

    profile = profiles.override(profiles.load("tiny"), {"fz.channel_batch": 8})
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    part = Store.create_or_open(tmp_path / "part.zarr", profile, record)
    whole = Store.create_or_open(tmp_path / "whole.zarr", profile, record)
    fz.run(part, model, record, profile, blocks=["3.1"], channels=range(6))
    fz.run(whole, model, record, profile, blocks=["3.1"])
    for store in (part, whole):
        metrics.run(store, model, record, profile, blocks=["3.1"])
    assert "left missing: 3.1 (10: 6-15)" in capsys.readouterr().err
    mine, theirs = (store.dataset("metrics").sel(block="3.1", stimulus_set="fz").load() for store in (part, whole))
    made, missing = list(range(6)), list(range(6, 16))
    for name in ("mix", "up_delta", "down_delta", "scale_metric", "invariant_naturally", "invariant_naturally_frequency"):
        np.testing.assert_array_equal(mine[name].sel(channel=made).values, theirs[name].sel(channel=made).values)
    assert mine["mix"].sel(channel=missing).isnull().all()
    assert mine["invariant_naturally_frequency"].sel(channel=missing).isnull().all()
    state = part.group_state("metrics")
    assert state.state == "partial" and "3.1 (6-15)" in state.why  # finished, but incomplete, and why
    fz.run(part, model, record, profile, blocks=["3.1"])
    metrics.run(part, model, record, profile, blocks=["3.1"])
    assert not any(":without-" in unit for unit in part.done("metrics") | part.done("responses"))
    for name in ("mix", "invariant_naturally_frequency"):
        np.testing.assert_array_equal(part.dataset("metrics")[name].sel(block="3.1").values,
                                      whole.dataset("metrics")[name].sel(block="3.1").values)
