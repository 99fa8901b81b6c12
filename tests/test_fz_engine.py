"""The named-FZ engine: an FZ is the same alone and in a batch, the objective rises, the loop is Lucent's recipe."""
from __future__ import annotations

import pytest
import torch

from repro import fz, profiles
from repro import fz_engine
from repro import fz_transforms as ft
from repro.device import lucent_on
from repro.model import ModelSpec, load_model
from repro.optvis import transform as lucent_transform

# A small random resnet18 at 32 px, float32 (bfloat16 would hide last-bit differences behind its own).
TINY = {"model.widths": [8, 8, 16, 16], "model.stem": "small", "model.num_classes": 10, "model.weights": "random:0",
        "model.image_size": 32, "fz.precision": "float32"}
STEPS = 12


@pytest.fixture(scope="module")
def tiny():
    profile = profiles.override(profiles.load("paper"), TINY)
    model, _ = load_model(ModelSpec.from_profile(profile["model"]))
    return profile, fz.prepare(model, "cpu")


@pytest.mark.parametrize("objective", ["neuron", "channel"])
@pytest.mark.parametrize("resample", ["fused", "staged"])
@pytest.mark.parametrize("jitter", [0, 4])
def test_an_fz_alone_is_the_fz_in_a_batch(tiny, jitter, resample, objective):
    """Channel 5, seed 1 alone and at position 5 among eight others (channels 0, 2, 5, 7; seeds 0 and 2).
    Without padding the nine see 32-34 px images of different sizes each step, so the forward is split by
    size. Batched convolutions round differently from single-image ones in the last bits, hence the
    tolerance."""
    profile, model = tiny
    batch = fz_engine.fz_names(profile, "2.1", "B", [0, 2, 5, 7], [0, 2], jitter=jitter, objective=objective,
                               resample=resample)
    target = fz_engine.fz_names(profile, "2.1", "B", [5], [1], jitter=jitter, objective=objective, resample=resample)[0]
    batch.insert(5, target)
    alone = fz_engine.optimize(model, profile, [target], steps=STEPS, trace_every=4, resample=resample)
    together = fz_engine.optimize(model, profile, batch, steps=STEPS, trace_every=4, resample=resample)
    torch.testing.assert_close(together.images[5], alone.images[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(together.trace[5], alone.trace[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.initial_objective[5], alone.initial_objective[0], atol=1e-6, rtol=0)
    # The other seeds of the same neuron are other FZs.
    for seed in (0, 2):
        other = batch.index(fz_engine.fz_names(profile, "2.1", "B", [5], [seed], jitter=jitter, objective=objective,
                                               resample=resample)[0])
        assert (together.images[other] - alone.images[0]).abs().max() > 0.05


@pytest.mark.parametrize("resample", ["fused", "staged"])
def test_the_objective_rises(tiny, resample):
    """Each FZ's center activation, measured on its saved image without transforms, against the same
    measure on its initial image (the objective during the run is read under each step's random draw)."""
    profile, model = tiny
    names = fz_engine.fz_names(profile, "3.1", "B", range(4), [0, 1], jitter=4, resample=resample)
    result = fz_engine.optimize(model, profile, names, steps=32, trace_every=8, resample=resample)
    assert result.trace.shape == (8, 4)
    assert result.images.shape == (8, 3, 32, 32) and 0 <= result.images.min() and result.images.max() <= 1
    _, initial_image = ft.image_parameterization([ft.fz_generator(name) for name in names], 32, decorrelate=True,
                                                 fft=True, device=torch.device("cpu"))
    with lucent_on(torch.device("cpu")):
        initial = initial_image().detach()
    channels = [name.channel for name in names]
    before = fz.measure(model, profile, "3.1", "B", fz.to_uint8(initial), channels)
    after = fz.measure(model, profile, "3.1", "B", fz.to_uint8(result.images), channels)
    # A random 32 px network under 4 px jitter: most FZs, not all, carry over to the untransformed image.
    assert (after > before).mean() >= 0.75 and after.mean() > before.mean() + 0.1, (before, after)
    assert result.trace[:, -2:].mean() > 2 * result.trace[:, 0].mean()


@pytest.mark.parametrize("resample", ["fused", "staged"])
def test_without_transforms_the_loop_is_lucents(tiny, monkeypatch, resample):
    """With identity transforms (scale 1, no rotation, no jitter) and an FZ's generator seeded as Lucent's
    global one, the engine is ``repro.fz.visualize`` at batch 1 (Lucent's param.image, Adam, objective)."""
    profile, model = tiny
    identity = profiles.override(profile, {"fz.random_scale": [1.0], "fz.rotate_degrees": 0})
    monkeypatch.setattr(fz_engine, "fz_generator", lambda name: torch.Generator().manual_seed(11))
    (name,) = fz_engine.fz_names(identity, "2.0", "O", [3], [0], jitter=0, resample=resample)
    ours = fz_engine.optimize(model, identity, [name], steps=STEPS, resample=resample)
    lucents = fz.visualize(model, identity, "2.0", "O", [3], jitter=0, seed=11, steps=STEPS, autocast_dtype=None)
    torch.testing.assert_close(ours.images, lucents.images, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.final_objective, lucents.final_objective, atol=1e-4, rtol=1e-4)


def test_one_tap_and_recipe_per_batch(tiny):
    profile, model = tiny
    names = fz_engine.fz_names(profile, "2.1", "B", [0], [0], jitter=0) + fz_engine.fz_names(profile, "2.1", "O", [0], [0], jitter=0)
    with pytest.raises(ValueError, match="one tap"):
        fz_engine.optimize(model, profile, names, steps=1)
    other = fz_engine.fz_names(profiles.override(profile, {"fz.lr": 0.2}), "2.1", "B", [0], [0], jitter=0)
    with pytest.raises(ValueError, match="recipe"):
        fz_engine.optimize(model, profile, other, steps=1)
    fused = fz_engine.fz_names(profile, "2.1", "B", [0], [0], jitter=0, resample="fused")
    with pytest.raises(ValueError, match="recipe"):
        fz_engine.optimize(model, profile, fused, steps=1)  # staged, the default
    assert other[0].recipe == ft.recipe_digest(profiles.override(profile, {"fz.lr": 0.2}))


@pytest.mark.parametrize("jitter", [0, 4])
def test_staged_is_lucents_fz_given_the_same_draws(tiny, monkeypatch, jitter):
    """End to end against ``repro.fz.visualize`` at batch 1 (Lucent's param.image, transforms and Adam):
    the FZ's generator seeded as Lucent's global one gives the same initial image, and Lucent's numpy draws
    are replaced by the FZ's own, step by step, in Lucent's order of calls. At Lucent's own forward sizes
    ("drawn"; the canvas forward differs from it near the right and bottom edges)."""
    profile, model = tiny
    profile = profiles.override(profile, {"fz.forward_size": "drawn"})
    seed, steps = 13, STEPS
    monkeypatch.setattr(fz_engine, "fz_generator", lambda name: torch.Generator().manual_seed(seed))
    (name,) = fz_engine.fz_names(profile, "2.1", "B", [6], [0], jitter=jitter)
    ours = fz_engine.optimize(model, profile, [name], steps=steps)
    # The same stream again: the initial parameters, then each step's draws.
    schedule = ft.Schedule.from_profile(profile, jitter)
    generator = torch.Generator().manual_seed(seed)
    ft.initial_parameters([generator], (3, 32, 17, 2))
    values = []
    for _ in range(steps):
        draws = ft.draw(schedule, [generator])
        shifts = ([int(v) for v in draws.first_shift[0]], [int(v) for v in draws.second_shift[0]])
        values += (shifts[0] if schedule.padded else []) + [float(draws.scale[0]), int(draws.angle[0])]
        values += shifts[1] if schedule.padded else []
    feed = iter(values)
    monkeypatch.setattr(lucent_transform.np.random, "choice", lambda options: next(feed))
    lucents = fz.visualize(model, profile, "2.1", "B", [6], jitter=jitter, seed=seed, steps=steps, autocast_dtype=None)
    assert next(feed, None) is None
    torch.testing.assert_close(ours.images, lucents.images, atol=1e-5, rtol=0)  # fused is 0.17 off here
    torch.testing.assert_close(ours.final_objective, lucents.final_objective, atol=1e-4, rtol=1e-4)
