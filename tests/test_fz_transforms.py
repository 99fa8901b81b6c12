"""Per-image FZ transforms: Lucent's chain image by image, draws and initial images a function of the FZ's name."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from scipy import stats
from torchvision.transforms import InterpolationMode

from repro import fz, profiles
from repro import fz_transforms as ft
from repro.device import lucent_on
from repro.optvis import param as lucent_param
from repro.optvis import transform as lucent_transform

# The toy profile: 64 px images; jitter 0 (scale and rotation only) and 4 (pad, jitter 4, ..., jitter 2, crop).
# Against Lucent image by image, each unpadded image at the size its draw gives ("drawn"); the toy's own
# "canvas" forward is that image in the top left corner of the largest draw's canvas (test_canvas_holds_...).
CANVAS = profiles.load("toy")
PROFILE = profiles.override(CANVAS, {"fz.forward_size": "drawn"})
JITTERS = (0, 4)

# Draws (first shift, scale, angle, second shift) whose chain is a single resample in Lucent too: here the
# two must agree to float rounding. Shifts are ignored without padding (Lucent draws none there).
SINGLE_RESAMPLE = [((0, 0), 1.0, 0, (0, 0)), ((0, 0), 1.0, 5, (0, 0)), ((0, 0), 1.0, -2, (0, 0)),
                   ((0, 0), 1.05, 0, (0, 0)), ((0, 0), 0.95, 0, (0, 0)), ((0, 0), 0.975, 0, (0, 0))]
PADDED_SINGLE_RESAMPLE = [((3, 1), 1.0, 0, (0, 0)), ((0, 0), 1.0, 0, (1, 1))]
# Several resamples in Lucent (scale and rotation, jitters with them), one here.
COMPOSED = [((2, 3), 0.975, -4, (1, 1)), ((1, 2), 1.025, 3, (0, 1)), ((3, 0), 1.05, 5, (1, 0)),
            ((0, 3), 0.95, -5, (0, 1)), ((1, 1), 1.0, 2, (1, 1))]


def draws_of(rows) -> ft.Draws:
    return ft.Draws(torch.tensor([row[0] for row in rows]), torch.tensor([row[1] for row in rows], dtype=torch.float64),
                    torch.tensor([float(row[2]) for row in rows], dtype=torch.float64),
                    torch.tensor([row[3] for row in rows]))


def noise_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Colour blobs about 10 px wide: where one bilinear resample and a sequence of them nearly agree."""
    coarse = torch.rand(n, 3, 7, 7, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(64, 64), mode="bicubic", align_corners=True).clamp(0, 1)


def lucent_chain(jitter: int, image: torch.Tensor, row, profile=PROFILE) -> torch.Tensor:
    """Lucent's own transform list (``repro.fz.transforms``) on one image, its numpy draws replaced by ``row``."""
    (dx1, dy1), scale, angle, (dx2, dy2) = row
    padded = ft.Schedule.from_profile(profile, jitter).padded
    # Lucent's order of np.random.choice calls: jitter dx, dy; scale; angle; jitter dx, dy.
    values = iter(([dx1, dy1] if padded else []) + [scale, angle] + ([dx2, dy2] if padded else []))
    with mock.patch.object(lucent_transform.np.random, "choice", lambda options: next(values)), lucent_on(torch.device("cpu")):
        out = lucent_transform.compose(fz.transforms(profile, jitter))(image[None])[0]
    assert next(values, None) is None, "Lucent drew fewer values than its chain should"
    return out


def own_image(transformed: ft.Transformed, i: int) -> torch.Tensor:
    size = transformed.sizes[i]
    return transformed.canvas[i, :, :size, :size]


@pytest.mark.parametrize("jitter", JITTERS)
def test_single_resample_draws_are_lucents_to_rounding(jitter):
    rows = SINGLE_RESAMPLE + (PADDED_SINGLE_RESAMPLE if jitter else [])
    images = noise_images(len(rows))
    transformed = ft.apply(images, ft.Schedule.from_profile(PROFILE, jitter), draws_of(rows), resample="fused")
    for i, row in enumerate(rows):
        expected = lucent_chain(jitter, images[i], row)
        assert own_image(transformed, i).shape == expected.shape, row
        torch.testing.assert_close(own_image(transformed, i), expected, atol=2e-5, rtol=0, msg=str(row))


def test_paper_sizes_single_resample_draws_are_lucents():
    """224 px at jitter 16: scale 1.025 gives a 263 px canvas, whose center crop starts at round(19.5) = 20.
    float32 sampling coordinates on a 256-263 px canvas are good to ~1e-5 px, hence the looser tolerance."""
    paper = profiles.load("paper")
    rows = [((5, 11), 1.0, 0, (0, 0)), ((0, 0), 1.025, 0, (0, 0)), ((0, 0), 1.0, -5, (0, 0)), ((0, 0), 0.95, 0, (0, 0)),
            ((0, 0), 1.0, 0, (3, 7))]
    images = torch.rand(len(rows), 3, 224, 224, generator=torch.Generator().manual_seed(4))
    transformed = ft.apply(images, ft.Schedule.from_profile(paper, 16), draws_of(rows), resample="fused")
    for i, row in enumerate(rows):
        torch.testing.assert_close(own_image(transformed, i), lucent_chain(16, images[i], row, paper), atol=1e-4, rtol=0,
                                   msg=str(row))


@pytest.mark.parametrize("jitter", JITTERS)
def test_composed_draws_are_lucents_within_interpolation(jitter):
    """One bilinear resample against Lucent's two to four, on ~10 px colour blobs.

    Away from zero-filled regions (pixels whose 3x3 neighbourhood has full weight in both chains) the
    largest difference stays below 4 % of the range. The zero fill itself (the chain on an all-ones image)
    agrees but for its edges: Lucent interpolates a zero band's hard edge once per later stage, here once,
    so the edge is a little sharper (mean difference below 0.3 %, at most 30 % on an edge pixel)."""
    images = smooth_images(len(COMPOSED), seed=1)
    ones = torch.ones_like(images)
    schedule = ft.Schedule.from_profile(PROFILE, jitter)
    transformed = ft.apply(images, schedule, draws_of(COMPOSED), resample="fused")
    weights = ft.apply(ones, schedule, draws_of(COMPOSED), resample="fused")
    for i, row in enumerate(COMPOSED):
        expected, expected_weight = lucent_chain(jitter, images[i], row), lucent_chain(jitter, ones[i], row)[0]
        ours, weight = own_image(transformed, i), own_image(weights, i)[0]
        assert ours.shape == expected.shape, row
        full = torch.minimum(weight, expected_weight)
        interior = -F.max_pool2d(-full[None, None], 3, stride=1, padding=1)[0, 0] >= 1 - 1e-4
        assert interior.float().mean() > 0.75, row
        assert (ours - expected).abs().amax(dim=0)[interior].max() < 0.04, row
        assert (ours - expected).abs().mean() < 5e-3, row
        assert (weight - expected_weight).abs().mean() < 3e-3, row
        assert (weight - expected_weight).abs().max() < 0.3, row


@pytest.mark.parametrize("jitter", JITTERS)
def test_staged_resamples_are_lucents_chain_to_rounding(jitter):
    """``resample="staged"``: Lucent's sequence of resamples, per image, on noise (no smoothness to hide in)."""
    rows = COMPOSED + SINGLE_RESAMPLE
    images = noise_images(len(rows), seed=5)
    transformed = ft.apply(images, ft.Schedule.from_profile(PROFILE, jitter), draws_of(rows), resample="staged")
    for i, row in enumerate(rows):
        torch.testing.assert_close(own_image(transformed, i), lucent_chain(jitter, images[i], row), atol=5e-5, rtol=0,
                                   msg=str(row))


def test_staged_resamples_at_paper_sizes():
    paper = profiles.load("paper")
    rows = [((10, 15), 0.975, -4, (7, 7)), ((5, 10), 1.025, 3, (0, 7)), ((15, 0), 1.05, 5, (7, 0))]
    images = torch.rand(len(rows), 3, 224, 224, generator=torch.Generator().manual_seed(4))
    transformed = ft.apply(images, ft.Schedule.from_profile(paper, 16), draws_of(rows), resample="staged")
    for i, row in enumerate(rows):
        torch.testing.assert_close(own_image(transformed, i), lucent_chain(16, images[i], row, paper), atol=2e-4,
                                   rtol=0, msg=str(row))


def test_rotation_is_torchvisions():
    """An independent reference for the rotation's direction and center: torchvision's rotate."""
    images = noise_images(2, seed=2)
    for angle in (5, -3):
        transformed = ft.apply(images, ft.Schedule.from_profile(PROFILE, 0), draws_of([((0, 0), 1.0, angle, (0, 0))] * 2),
                               resample="fused")
        expected = TF.rotate(images, float(angle), interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(transformed.canvas[:, :, :64, :64], expected, atol=2e-5, rtol=0)


def test_affine_grid_is_torchs():
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for size in (2, 37, 64):
        torch.testing.assert_close(ft.affine_grid(theta, size),
                                   F.affine_grid(theta, [5, 1, size, size], align_corners=True), atol=1e-12, rtol=0)


@pytest.mark.parametrize("resample", ft.RESAMPLES)
def test_output_sizes_and_canvas(resample):
    """Without padding the network sees Lucent's sizes (64-68 px on the toy); with it, the crop's 64 px."""
    unpadded, padded = (ft.Schedule.from_profile(PROFILE, j) for j in JITTERS)
    assert {s: unpadded.output_size(s) for s in unpadded.scales} == {1.0: 64, 0.975: 65, 1.025: 66, 0.95: 65, 1.05: 68}
    assert unpadded.canvas_size == 68
    assert padded.canvas_size == 64 and {padded.output_size(s) for s in padded.scales} == {64}
    rows = [((0, 0), s, 0, (0, 0)) for s in (1.05, 1.0, 0.95, 1.05)]
    transformed = ft.apply(noise_images(4), unpadded, draws_of(rows), resample)
    assert transformed.sizes == [68, 64, 65, 68]
    groups = {int(images.shape[-1]): index.tolist() for index, images in transformed.groups()}
    assert groups == {64: [1], 65: [2], 68: [0, 3]}
    # Outside an image's own size its canvas is zero.
    assert transformed.canvas[1, :, 64:].abs().max() == 0 and transformed.canvas[1, :, :, 64:].abs().max() == 0


@pytest.mark.parametrize("resample", ft.RESAMPLES)
@pytest.mark.parametrize("jitter", JITTERS)
def test_canvas_holds_the_drawn_image_in_its_top_left_corner(jitter, resample):
    """``forward_size="canvas"``: every image on the 68 px canvas, the drawn image in its top left corner (where
    Lucent's chain puts it) and zeros right and below; padded chains (64 px after the crop) are unchanged."""
    rows = [((1, 2), s, a, (1, 0)) for s, a in ((1.05, 3), (1.0, -2), (0.95, 5), (0.975, 0), (1.025, -4))]
    images = noise_images(len(rows), seed=7)
    drawn = ft.apply(images, ft.Schedule.from_profile(PROFILE, jitter), draws_of(rows), resample)
    placed = ft.apply(images, ft.Schedule.from_profile(CANVAS, jitter), draws_of(rows), resample)
    if jitter:
        assert torch.equal(placed.canvas, drawn.canvas) and placed.sizes == drawn.sizes == [64] * len(rows)
        return
    assert placed.sizes == [68] * len(rows) and len(placed.groups()) == 1
    for i, size in enumerate(drawn.sizes):
        assert torch.equal(placed.canvas[i, :, :size, :size], own_image(drawn, i))
        assert placed.canvas[i, :, size:].abs().max() == 0 if size < 68 else True
        assert placed.canvas[i, :, :, size:].abs().max() == 0 if size < 68 else True


def test_a_center_neuron_on_the_canvas_is_the_drawn_images():
    """On the canvas the feature grid starts at the top left corner as in the drawn image, so the engine reads
    each image's objective on the canvas map cropped to its drawn image's map (``own_map_values``); for a tap
    whose receptive field stays inside the drawn image that is the value Lucent's forward of it gives."""
    from repro import model as taps_model
    from repro.fz_engine import map_extent, own_map_values
    from repro.model import ModelSpec, load_model
    from repro.objectives import OBJECTIVES

    network, _ = load_model(ModelSpec.from_profile(profiles.override(PROFILE, {"model.weights": "random:0"})["model"]))
    rows = [((0, 0), s, a, (0, 0)) for s, a in ((1.05, 3), (1.0, -2), (0.95, 5), (0.975, 0), (1.025, -4))]
    images = smooth_images(len(rows), seed=8)
    drawn = ft.apply(images, ft.Schedule.from_profile(PROFILE, 0), draws_of(rows), "fused")
    placed = ft.apply(images, ft.Schedule.from_profile(CANVAS, 0), draws_of(rows), "fused")
    assert placed.drawn == drawn.sizes
    label, channels = ("1.1", "B"), torch.tensor([0, 3, 5, 7, 2])
    with torch.no_grad():
        maps, _ = taps_model.run(network, placed.canvas, [label], stop=True)
        extents = [map_extent(network, PROFILE, label, size, False) for size in placed.drawn]
        assert len(set(extents)) > 1  # the center moves with the drawn size, as in Lucent's forwards
        ours = own_map_values(OBJECTIVES["neuron"], maps[label], channels, extents)
        for i in range(len(rows)):
            alone, _ = taps_model.run(network, own_image(drawn, i)[None], [label], stop=True, center=True)
            torch.testing.assert_close(ours[i], alone[label][0, channels[i]], atol=1e-4, rtol=1e-4)


def test_forward_size_is_part_of_the_recipe():
    assert ft.recipe_digest(CANVAS) != ft.recipe_digest(PROFILE)


# ---------------------------------------------------------------- names and streams


def names(seeds=(0,), channels=(3,), block="3.1", tap="B", jitter=4):
    digest = ft.recipe_digest(PROFILE)
    return [ft.FZName(s, block, tap, c, jitter, "neuron", digest) for s in seeds for c in channels]


def test_name_text_holds_every_part():
    (name,) = names(seeds=(2,), channels=(17,))
    assert name.text == f"fz/seed=2/block=3.1/tap=B/channel=17/jitter=4/objective=neuron/recipe={ft.recipe_digest(PROFILE)}"
    other = profiles.override(PROFILE, {"fz.lr": 0.1})
    assert ft.recipe_digest(other) != ft.recipe_digest(PROFILE)


@pytest.mark.parametrize("resample", ft.RESAMPLES)
@pytest.mark.parametrize("jitter", JITTERS)
def test_draws_and_images_depend_only_on_the_name(jitter, resample):
    """One FZ at position 1 of a batch of 5 and at position 3 of a batch of 4 with other neighbours."""
    schedule = ft.Schedule.from_profile(PROFILE, jitter)
    target = names(seeds=(1,), channels=(7,), jitter=jitter)[0]
    first = names(seeds=(0,), channels=(1,), jitter=jitter) + [target] + names(seeds=(2, 3), channels=(7, 9), jitter=jitter)[:3]
    second = names(seeds=(0, 5), channels=(8, 2), jitter=jitter)[:3] + [target]
    streams = [[ft.fz_generator(name) for name in batch] for batch in (first, second)]
    parameters = [ft.initial_parameters(generators, (3, 64, 33, 2)) for generators in streams]
    assert torch.equal(parameters[0][1], parameters[1][3])
    image = noise_images(1, seed=3)
    for _ in range(6):
        draws = [ft.draw(schedule, generators) for generators in streams]
        for field in ("first_shift", "scale", "angle", "second_shift"):
            assert torch.equal(getattr(draws[0], field)[1], getattr(draws[1], field)[3])
        outputs = [ft.apply(torch.cat([torch.rand(1, 3, 64, 64), image, torch.rand(3, 3, 64, 64)]), schedule, draws[0], resample),
                   ft.apply(torch.cat([torch.rand(3, 3, 64, 64), image]), schedule, draws[1], resample)]
        assert torch.equal(own_image(outputs[0], 1), own_image(outputs[1], 3))


def test_seeds_of_one_neuron_draw_independently():
    schedule = ft.Schedule.from_profile(PROFILE, 4)
    pair = names(seeds=(0, 1), channels=(5,))
    generators = [ft.fz_generator(name) for name in pair]
    start = ft.initial_parameters(generators, (3, 64, 33, 2))
    assert abs(np.corrcoef(start[0].flatten(), start[1].flatten())[0, 1]) < 0.05
    steps = [ft.draw(schedule, generators) for _ in range(40)]
    scales = torch.stack([step.scale for step in steps])
    angles = torch.stack([step.angle for step in steps])
    shifts = torch.stack([step.first_shift for step in steps])
    # Equal in a step by chance: 1/5 (scale), 1/11 (angle), 1/16 (shift); over 40 steps far from always.
    assert (scales[:, 0] == scales[:, 1]).float().mean() < 0.5
    assert (angles[:, 0] == angles[:, 1]).float().mean() < 0.4
    assert (shifts[:, 0] == shifts[:, 1]).all(dim=1).float().mean() < 0.3


def test_draws_are_lucents_distributions():
    """Uniform over 0..j-1, the scale list, the integer degrees, 0..j//2-1 (chi-square over 4000 steps)."""
    schedule = ft.Schedule.from_profile(PROFILE, 4)
    generators = [ft.fz_generator(name) for name in names(seeds=(0, 1), channels=(0, 1))]
    steps = [ft.draw(schedule, generators) for _ in range(1000)]

    def uniform_over(values: torch.Tensor, support) -> None:
        counts = np.array([(values == v).sum().item() for v in support])
        assert counts.sum() == values.numel(), f"values outside {support}"
        assert stats.chisquare(counts).pvalue > 1e-3

    uniform_over(torch.cat([s.first_shift for s in steps]).flatten(), range(4))
    uniform_over(torch.cat([s.second_shift for s in steps]).flatten(), range(2))
    uniform_over(torch.cat([s.scale for s in steps]), schedule.scales)
    uniform_over(torch.cat([s.angle for s in steps]), range(-5, 6))


def test_initial_images_are_per_name_and_distributed_as_lucents():
    generators = [ft.fz_generator(name) for name in names(seeds=range(4), channels=range(4))]
    params, image_f = ft.image_parameterization(generators, 64, decorrelate=True, fft=True, device=torch.device("cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with lucent_on(torch.device("cpu")):
            lucent_params, lucent_image_f = lucent_param.image(64, batch=16, decorrelate=True, fft=True)
    (ours,), (lucents,) = params, lucent_params
    assert ours.shape == lucents.shape and ours.requires_grad
    # Rows are the per-name draws: the same name alone gives the same row.
    alone = ft.initial_parameters([ft.fz_generator(names(seeds=(2,), channels=(1,))[0])], ours.shape[1:])
    assert torch.equal(ours[2 * 4 + 1], alone[0])
    # Lucent's spread: N(0, 0.01) entries (two-sample KS against Lucent's own draw, and the moments).
    assert abs(ours.mean().item()) < 2e-4 and ours.std().item() == pytest.approx(0.01, rel=0.01)
    assert stats.ks_2samp(ours.detach().flatten().numpy(), lucents.detach().flatten().numpy()).pvalue > 1e-3
    with lucent_on(torch.device("cpu")):
        images, lucent_images = image_f(), lucent_image_f()
    assert images.shape == lucent_images.shape == (16, 3, 64, 64)
    assert images.std().item() == pytest.approx(lucent_images.std().item(), rel=0.05)


def test_parameterization_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    ft.image_parameterization([ft.fz_generator("a"), ft.fz_generator("b")], 64, decorrelate=True, fft=True,
                              device=torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), state)
