"""The scale-robust ablation stage on a tiny random-weight model and a generated ImageFolder."""
import math

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from analyses import ablation as analysis
from helpers import randomize_batchnorm
from repro import ablate, images, profiles
from repro.errors import UserError
from repro.model import ModelSpec, blocks, load_model
from repro.store import Store, labels

N_IMAGES = 40  # decodable ones; the folder also holds one corrupt file
N_CLASSES = 10
SIZES = [(60, 44), (37, 52), (40, 40), (51, 70), (37, 37)]  # (width, height) before Resize(37)
BLOCKS = ["1.1", "2.0", "2.1", "3.0", "3.1"]
WIDTH = {"1.1": 8, "2.0": 8, "2.1": 8, "3.0": 16, "3.1": 16}
INVARIANT = {"2.1": [1, 4], "3.1": [0, 5, 9]}


def small_profile(**settings):
    profile = profiles.override(profiles.load("paper"), {
        "model.widths": [8, 8, 16, 16], "model.stem": "small", "model.num_classes": N_CLASSES,
        "model.weights": "random:0", "model.image_size": 32, "natural.resize": 37, "natural.crop": 32,
        "ablation.trials": 3, "ablation.max_draws": 12, "ablation.scales": [0.1, 0.3], "ablation.batch_size": 16,
        "ablation.screen_tolerance": {"2.1": 25.0, "3.1": 0.0},
    })
    return profiles.override(profile, settings)


def calibrated_model(profile, pictures):
    """A random network whose class logits are standardized over ``pictures``, so it predicts every class."""
    model, record = load_model(ModelSpec.from_profile(profile["model"]))
    randomize_batchnorm(model)
    x = torch.stack([images.eval_transform(profile)(picture) for picture in pictures])
    with torch.no_grad():
        logits = model(x)
        scale = logits.std(0)
        model.fc.weight.div_(scale[:, None])
        model.fc.bias.copy_((model.fc.bias - logits.mean(0)) / scale)
    return model, record


def random_picture(rng, width, height):
    """Smooth random colours with pixel noise."""
    coarse = torch.from_numpy(rng.integers(0, 256, size=(3, 6, 6), dtype=np.uint8))
    smooth = v2.functional.resize(coarse, [height, width], antialias=True).numpy().astype(int)
    noisy = np.clip(smooth + rng.integers(-20, 21, size=smooth.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy.transpose(1, 2, 0))


def decodable(root):
    """(relative path, label, decoded image) of every image of the folder that decodes."""
    found = images.find_images(root)
    kept = []
    for path, label in zip(found.paths, found.labels):
        try:
            kept.append((path, label, images.load_rgb(root / path)))
        except OSError:
            continue
    return kept


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """``val/<class>/<file>.png`` whose labels match the random model's prediction on 3 images in 4 (so
    accuracy has room to drop), every class present, plus one corrupt file."""
    rng = np.random.default_rng(0)
    profile = small_profile()
    pictures = [random_picture(rng, *SIZES[i % len(SIZES)]) for i in range(N_IMAGES)]
    model, _ = calibrated_model(profile, pictures)
    with torch.no_grad():
        predicted = model(torch.stack([images.eval_transform(profile)(p) for p in pictures])).argmax(1).tolist()
    root = tmp_path_factory.mktemp("images") / "val"
    for i, picture in enumerate(pictures):
        label = i // 4 if i % 4 == 3 else predicted[i]
        (root / f"n{label:08d}").mkdir(parents=True, exist_ok=True)
        picture.save(root / f"n{label:08d}" / f"img_{i:03d}.png")
    (root / "n00000000" / "zz_broken.png").write_bytes(b"not an image")
    return root


def write_image_cache(store, root, resize):
    """The decoded-image cache in ``repro.images``'s layout, made from the folder with its functions."""
    found = images.find_images(root)
    pixels = np.zeros((len(found), resize, resize, 3), np.uint8)
    sizes = np.zeros((len(found), 2), np.int32)
    corrupt = np.zeros(len(found), bool)
    for i, path in enumerate(found.paths):
        try:
            pixels[i], sizes[i] = images.cache_square(images.load_rgb(root / path), resize)
        except OSError:
            corrupt[i] = True
    cache = xr.Dataset(
        {"pixels": (("image", "y", "x", "rgb"), pixels), "resized_height": (("image",), sizes[:, 0]),
         "resized_width": (("image",), sizes[:, 1]), "corrupt": (("image",), corrupt)},
        coords={"image": np.arange(len(found)), "path": ("image", labels(found.paths)),
                "label": ("image", np.asarray(found.labels))})
    cache.to_zarr(str(store.path), group=images.CACHE_GROUP, mode="w", consolidated=False)
    store.update_attrs(images.CACHE_GROUP, complete=True)
    return cache


def write_metrics(store):
    channel = np.arange(16)
    invariant = np.zeros((len(BLOCKS), 16, 2), dtype=bool)
    valid = np.zeros((len(BLOCKS), 16), dtype=bool)
    for row, block in enumerate(BLOCKS):
        valid[row, : WIDTH[block]] = True
        invariant[row, INVARIANT.get(block, []), 0] = True
    interpreting = invariant.copy()
    interpreting[:, :, 0] &= channel[None, :] % 2 == 0
    xr.Dataset(
        {"invariant_naturally": (("block", "channel", "stimulus_set"), invariant),
         "invariant_interpreting": (("block", "channel", "stimulus_set"), interpreting),
         "valid": (("block", "channel"), valid)},
        coords={"block": labels(BLOCKS), "channel": channel, "stimulus_set": labels(["fz", "top9"])},
    ).to_zarr(str(store.path), group="metrics", mode="w", consolidated=False)


def write_natural(store, cache, seed=1):
    rng = np.random.default_rng(seed)
    activation = rng.normal(0.3, 1.0, size=(len(BLOCKS), 3, 16, cache.sizes["image"])).astype(np.float32)
    xr.Dataset({"activation": (("block", "tap", "channel", "image"), activation)},
               coords={"block": labels(BLOCKS), "tap": labels(["I", "B", "O"]), "channel": np.arange(16),
                       "path": ("image", cache["path"].values), "label": ("image", cache["label"].values)},
               ).to_zarr(str(store.path), group="natural", mode="w", consolidated=False)


def make_store(path, profile, root, with_metrics=True, with_natural=True):
    model, record = calibrated_model(profile, [picture for _, _, picture in decodable(root)])
    store = Store.create_or_open(path, profile, record)
    cache = write_image_cache(store, root, profile["natural"]["resize"])
    if with_metrics:
        write_metrics(store)
    if with_natural:
        write_natural(store, cache)
    return store, model, record


@pytest.fixture(scope="module")
def finished(tmp_path_factory, image_folder):
    profile = small_profile()
    store, model, record = make_store(tmp_path_factory.mktemp("ablate") / "run.zarr", profile, image_folder)
    return profile, store, model, record, ablate.run(store, model, record, profile).load()


def reference_accuracy(model, root, profile, crop_px=None):
    """Top-1 % of a plain forward ``model(x)`` over the decodable images, with torchvision's own transforms
    on the decoded images: the eval transform, or Resize, CenterCrop(crop_px), Resize(crop)."""
    if crop_px is None:
        transform = images.eval_transform(profile)
    else:
        crop, model_table = profile["natural"]["crop"], profile["model"]
        transform = transforms.Compose([
            transforms.Resize(profile["natural"]["resize"]), transforms.PILToTensor(), v2.CenterCrop(crop_px),
            v2.Resize(crop, antialias=True), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(model_table["normalize_mean"], model_table["normalize_std"])])
    kept = decodable(root)
    x = torch.stack([transform(picture) for _, _, picture in kept])
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    return 100 * np.sum(predicted == np.array([label for _, label, _ in kept])) / len(kept)


# ------------------------------------------------------------ scale transforms


def test_crop_sizes_follow_both_definitions():
    paper = [ablate.crop_size(p, 256, 224, "paper") for p in (0.1, 0.2, 0.3, 0.4, 0.5)]
    code = [ablate.crop_size(p, 256, 224, "code") for p in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert paper == [256 - math.floor(256 * p) for p in (0.1, 0.2, 0.3, 0.4, 0.5)] == [231, 205, 180, 154, 128]
    assert code == [int(224 * (1 - p)) for p in (0.1, 0.2, 0.3, 0.4, 0.5)] == [201, 179, 156, 134, 112]
    assert ablate.crop_size(0.0, 256, 224, "paper") == ablate.crop_size(0.0, 256, 224, "code") == 224
    with pytest.raises(UserError):
        ablate.crop_size(0.1, 256, 224, "other")


def paper_sized_batch(rng, definition="paper"):
    """Two decoded images of other shapes, their cache squares at resize 256, and the paper profile."""
    profile = profiles.override(profiles.load("paper"), {"ablation.scale_definition": definition})
    pictures = [random_picture(rng, 341, 256), random_picture(rng, 300, 401)]
    squares, sizes = zip(*(images.cache_square(picture, 256) for picture in pictures))
    heights, widths = zip(*sizes)
    batch = ablate.CacheBatch(np.stack(squares), np.zeros(2, np.int64), np.array(heights), np.array(widths))
    return profile, pictures, batch


@pytest.mark.parametrize("definition, crop_px", [("paper", 231), ("code", 201)])
def test_scale_transform_is_the_center_crop_of_the_resized_image_then_resize(definition, crop_px):
    profile, pictures, batch = paper_sized_batch(np.random.default_rng(1), definition)
    settings = ablate.Settings.from_profile(profile)
    assert settings.crop_px(0.1) == crop_px
    resized = [transforms.PILToTensor()(transforms.Resize(256)(picture)) for picture in pictures]
    crops = torch.stack([v2.functional.center_crop(image, [crop_px, crop_px]) for image in resized])
    expected = images.normalize(v2.functional.resize(crops, [224, 224], interpolation=InterpolationMode.BILINEAR,
                                                     antialias=True).float() / 255, profile)
    assert torch.equal(ablate.scaled_inputs(batch, crop_px, 224, profile), expected)
    standard = torch.stack([images.eval_transform(profile)(picture) for picture in pictures])
    assert torch.equal(ablate.scaled_inputs(batch, settings.crop_px(0.0), 224, profile), standard)


def test_scale_transform_is_close_to_the_authors_pil_pipeline():
    """The authors' PIL transforms and the tensor kernel differ only by rounding."""
    profile, pictures, batch = paper_sized_batch(np.random.default_rng(2))
    authors = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(231), transforms.Resize(224)])
    crops = images.center_crop_from_cache(batch.squares, 231, batch.resized_height, batch.resized_width)
    ours = ablate.resize_crops(crops, 224).permute(0, 2, 3, 1).numpy().astype(int)
    for picture, tensor_resized in zip(pictures, ours):
        difference = np.abs(np.asarray(authors(picture), dtype=int) - tensor_resized)
        assert difference.mean() < 0.5 and difference.max() <= 3


# ------------------------------------------------------------ ablation edit


def hooked_forward(model, x, edit=None):
    """Plain torchvision forward (or repro.model.run with an edit) with hooks that clone every block's
    input, bn2 output and conv1 input."""
    from repro.model import run

    seen, handles = {}, []
    for name, block in blocks(model).items():
        handles.append(block.conv1.register_forward_pre_hook(
            lambda m, args, name=name: seen.__setitem__((name, "conv1_in"), args[0].clone())))
        handles.append(block.bn2.register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__((name, "B"), out.clone())))
    with torch.no_grad():
        logits = model(x) if edit is None else run(model, x, edit_output={"2.1": edit})[1]
    for handle in handles:
        handle.remove()
    return seen, logits


def test_ablation_changes_only_the_chosen_channels_of_O(finished):
    profile, _, model, _, _ = finished
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    chosen = [1, 4]
    values = torch.tensor(np.linspace(-0.5, 0.9, 8), dtype=torch.float32)
    masks = ablate.condition_masks([[], chosen], 8)
    edited = {}

    def capture(output):
        edited["O"] = ablate.ablation_edit(masks, values)(output)
        return edited["O"]

    plain, plain_logits = hooked_forward(model, x)
    ablated, logits = hooked_forward(model, x, capture)
    order = list(blocks(model))
    for name in order[: order.index("2.1") + 1]:  # everything up to the edit ran once, unchanged
        assert torch.equal(ablated[(name, "B")], plain[(name, "B")])
        assert torch.equal(ablated[(name, "conv1_in")], plain[(name, "conv1_in")])
    true_o = plain[("2.1", "B")] + plain[("2.1", "conv1_in")]  # bn2 + identity of a simple block
    none_copy, ablated_copy = edited["O"][:8], edited["O"][8:]
    others = [c for c in range(8) if c not in chosen]
    assert torch.equal(none_copy, true_o)
    assert torch.equal(ablated_copy[:, others], true_o[:, others])
    for channel in chosen:
        assert torch.all(ablated_copy[:, channel] == values[channel])
    after = ablated[("3.0", "conv1_in")]  # the post-ReLU block output fed to the next block
    assert torch.equal(after[:8], plain[("3.0", "conv1_in")])
    assert torch.equal(after[8:, others], torch.relu(true_o[:, others]))
    constant = torch.relu(values[chosen])[None, :, None, None].expand(8, -1, *after.shape[2:])
    assert torch.equal(after[8:, chosen], constant)
    torch.testing.assert_close(logits[:8], plain_logits)
    assert not torch.allclose(logits[8:], plain_logits)


def test_mean_ablation_constant_is_mean_relu_of_center_o(finished):
    _, store, _, _, result = finished
    natural = xr.open_zarr(str(store.path), group="natural", consolidated=False)
    for block in ("2.1", "3.1"):
        activations = natural["activation"].sel(block=block, tap="O").values[: WIDTH[block]]  # (channel, image)
        expected = np.array([np.mean([max(float(a), 0.0) for a in row]) for row in activations])
        np.testing.assert_allclose(ablate.ablation_values(natural, block, WIDTH[block], "mean"), expected, rtol=1e-12)
        np.testing.assert_allclose(result["ablation_value"].sel(block=block).values[: WIDTH[block]], expected,
                                   rtol=1e-12)
        assert np.all(ablate.ablation_values(natural, block, WIDTH[block], "zero") == 0)


# ------------------------------------------------------------ accuracy


def test_unablated_accuracy_equals_a_plain_forward(finished, image_folder):
    profile, _, model, _, result = finished
    assert result.attrs["n_images"] == N_IMAGES  # the corrupt file is left out
    expected = reference_accuracy(model, image_folder, profile)
    assert 0 < expected < 100
    for block in ("2.1", "3.1"):
        assert result["accuracy"].sel(block=block, condition="none", trial=0, scale=0.0).item() == expected
    for scale in (0.1, 0.3):
        scaled = reference_accuracy(model, image_folder, profile, crop_px=ablate.crop_size(scale, 37, 32, "paper"))
        assert result["accuracy"].sel(block="3.1", condition="none", trial=0, scale=scale).item() == scaled


def test_store_layout_and_sets(finished):
    *_, result = finished
    assert list(result["condition"].values) == ["none", "invariant", "random"]
    assert list(result["scale"].values) == [0.0, 0.1, 0.3]
    assert list(result["crop_px"].values) == [32, 34, 26]
    assert result.attrs["scale_definition"] == "paper" and result.attrs["ablation"] == "mean"
    assert result.attrs["criterion"] == "naturally" and result.attrs["stage"] == "ablation"
    assert result.attrs["complete"]
    accuracy = result["accuracy"]
    assert accuracy.sel(condition=["none", "invariant"], trial=[1, 2]).isnull().all()
    assert accuracy.sel(condition=["none", "invariant"], trial=0).notnull().all()
    assert accuracy.sel(condition="random").notnull().all()
    for block, invariant in INVARIANT.items():
        channels = result["channels"].sel(block=block)
        assert list(np.flatnonzero(channels.sel(condition="invariant", trial=0))) == invariant
        assert not channels.sel(condition="none").any()
        for trial in range(3):
            drawn = np.flatnonzero(channels.sel(condition="random", trial=trial))
            assert len(drawn) == len(invariant) and not set(drawn) & set(invariant)
            assert drawn.max() < WIDTH[block]


def test_screening_records_every_draw_by_the_rule(finished):
    *_, result = finished
    assert result["rejected_draws"].sum() > 0  # the fixture's tolerances reject some draws
    for block in ("2.1", "3.1"):
        stored = result.sel(block=block)
        reference = stored["accuracy"].sel(condition="invariant", trial=0, scale=0.0).item()
        tolerance = stored["screen_tolerance"].item()
        made = stored["draw_accuracy"].notnull().values
        draws = np.flatnonzero(made)
        assert list(draws) == list(range(len(draws)))  # draws are made in order, none skipped
        accuracy = stored["draw_accuracy"].values[made]
        assert list(stored["rejected"].values[made]) == list(accuracy > reference + tolerance)
        assert stored["rejected_draws"].item() == int(stored["rejected"].sum())
        accepted = np.flatnonzero(stored["draw_trial"].values >= 0)
        assert len(accepted) == 3 and accepted[-1] == draws[-1]  # drawing stops at the last accepted set
        np.testing.assert_array_equal(stored["accuracy"].sel(condition="random", scale=0.0).values,
                                      stored["draw_accuracy"].values[accepted])
        np.testing.assert_array_equal(stored["channels"].sel(condition="random").values,
                                      stored["draw_channels"].values[accepted])


def test_screening_rule_on_a_constructed_case():
    accuracies = [50.5, 50.0, 49.0, 52.0, 51.0, 40.0, 30.0]
    strict = ablate.screen(accuracies, reference=50.0, tolerance=0.0, trials=3)
    assert strict.accepted == (1, 2, 5) and strict.rejected == (0, 3, 4) and strict.complete
    assert strict.draws_made == 6  # draw 6 comes after the third accepted draw: not made
    relaxed = ablate.screen(accuracies, reference=50.0, tolerance=1.0, trials=3)
    assert relaxed.accepted == (0, 1, 2) and relaxed.rejected == () and relaxed.draws_made == 3
    at_the_limit = ablate.screen([51.0, 51.0 + 1e-6], reference=50.0, tolerance=1.0, trials=2)
    assert at_the_limit.accepted == (0,) and at_the_limit.rejected == (1,) and not at_the_limit.complete


def test_draws_are_seeded_per_block_and_draw():
    candidates = list(range(2, 60))
    first = ablate.random_draw(0, "2.1", 3, candidates, 5)
    assert first == ablate.random_draw(0, "2.1", 3, candidates, 5)
    assert first != ablate.random_draw(0, "3.1", 3, candidates, 5)
    assert first != ablate.random_draw(1, "2.1", 3, candidates, 5)
    assert len(set(first)) == 5 and set(first) <= set(candidates)


def test_running_out_of_draws_warns_and_goes_on_with_the_accepted_sets(tmp_path, image_folder):
    profile = small_profile(**{"ablation.screen_tolerance": {"2.1": -200.0}, "ablation.blocks": ["2.1"],
                               "ablation.max_draws": 5})
    store, model, record = make_store(tmp_path / "run.zarr", profile, image_folder)
    with pytest.warns(UserWarning, match=r"only 0 of 3 random sets passed screening in 5 draws"):
        ablate.run(store, model, record, profile)
    stored = store.dataset("ablation").sel(block="2.1").load()
    assert stored["draw_accuracy"].notnull().sum().item() == 5  # every draw was made and kept
    assert stored["rejected"].sum().item() == 5
    assert stored["accuracy"].sel(condition="random").isnull().all()  # no random set was accepted
    assert stored["accuracy"].sel(condition="invariant", trial=0).notnull().all()  # every scale still measured
    assert store.group_attrs("ablation")["complete"]


# ------------------------------------------------------------ resume, options, errors


@pytest.mark.parametrize("stage", ["screening", "scale"])
def test_interrupted_run_resumes_to_identical_results(finished, tmp_path, monkeypatch, stage, image_folder):
    """Killed during the second screening round or the second scale pass, then run again."""
    profile, *_, uninterrupted = finished
    store, model, record = make_store(tmp_path / "run.zarr", profile, image_folder)
    real_evaluate, passes = ablate.evaluate, []

    def killed_on_second_pass_of_stage(*args, **kwargs):
        passes.append(kwargs["desc"])
        if sum(desc.startswith(stage) for desc in passes) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(ablate, "evaluate", killed_on_second_pass_of_stage)
    with pytest.raises(KeyboardInterrupt):
        ablate.run(store, model, record, profile)
    done_before = store.done("ablation")
    assert done_before and not store.group_attrs("ablation")["complete"]
    assert any(unit.startswith("scale/") for unit in done_before) == (stage == "scale")
    monkeypatch.setattr(ablate, "evaluate", real_evaluate)
    resumed = ablate.run(store, model, record, profile).load()
    assert done_before < store.done("ablation")
    for name in ("accuracy", "channels", "draw_accuracy", "draw_channels", "rejected", "draw_trial",
                 "rejected_draws", "ablation_value"):
        xr.testing.assert_identical(resumed[name], uninterrupted[name])


def test_explicit_channel_sets_and_zero_ablation_need_no_metrics_or_natural(tmp_path, image_folder):
    profile = small_profile(**{"ablation.ablation": "zero", "ablation.blocks": [], "ablation.scales": [0.5],
                               "ablation.scale_definition": "code", "ablation.trials": 2})
    store, model, record = make_store(tmp_path / "run.zarr", profile, image_folder, with_metrics=False,
                                      with_natural=False)
    result = ablate.run(store, model, record, profile, channel_sets={"3.1": [3, 7]})
    assert list(result["block"].values) == ["3.1"]
    assert list(result["crop_px"].values) == [32, 16]
    assert result.attrs["ablation"] == "zero" and (result["ablation_value"].values == 0).all()
    assert list(np.flatnonzero(result["channels"].sel(block="3.1", condition="invariant", trial=0))) == [3, 7]


def test_bad_inputs_stop_with_one_clear_message(tmp_path, image_folder):
    profile = small_profile(**{"ablation.blocks": ["3.0"]})
    store, model, record = make_store(tmp_path / "run.zarr", profile, image_folder)
    with pytest.warns(UserWarning, match="no scale-invariant channels"):
        assert ablate.run(store, model, record, profile) is None
    assert not store.has("ablation")
    with pytest.raises(UserError, match="unknown block"):
        ablate.run(store, model, record, profile, channel_sets={"9.9": [1]})
    with pytest.raises(UserError, match="do not exist"):
        ablate.run(store, model, record, profile, channel_sets={"3.0": [16]})
    bare, model, record = make_store(tmp_path / "bare.zarr", small_profile(), image_folder, with_metrics=False)
    with pytest.raises(UserError, match="run `repro metrics` first"):
        ablate.run(bare, model, record, small_profile())


# ------------------------------------------------------------ analysis


def constructed_ablation():
    rng = np.random.default_rng(0)
    scales = [0.0, 0.1, 0.2]
    accuracy = np.full((2, 3, 4, 3), np.nan)
    accuracy[:, 0, 0] = 70.0
    accuracy[:, 1, 0] = [[60.0, 55.0, 50.0], [62.0, 58.0, 52.0]]
    accuracy[:, 2] = 61.0 + rng.normal(0, 1, size=(2, 4, 3))
    return xr.Dataset({"accuracy": (("block", "condition", "trial", "scale"), accuracy),
                       "rejected_draws": (("block",), np.array([2, 7]))},
                      coords={"block": labels(["2.1", "3.1"]), "condition": labels(["none", "invariant", "random"]),
                              "trial": np.arange(4), "scale": scales, "crop_px": ("scale", [224, 231, 205])})


def test_accuracy_ratios_are_the_mean_of_per_trial_ratios():
    ds = constructed_ablation()
    ratios = analysis.accuracy_ratios(ds, "3.1")
    random = ds["accuracy"].values[1, 2]
    per_trial = np.array([62.0, 58.0, 52.0])[None] / random
    np.testing.assert_allclose(ratios["mean"].values, per_trial.mean(axis=0))
    sd = per_trial.std(axis=0, ddof=1)
    np.testing.assert_allclose(ratios["sem"].values, sd / np.sqrt(4))
    assert ratios["no_scale_ratio"].item() == pytest.approx(per_trial[:, 0].mean())


def test_ratio_figure_and_accuracy_table():
    ds = constructed_ablation()
    figure = analysis.ratio_figure(ds)
    axes = figure.get_axes()
    assert [ax.get_title().split(":")[0] for ax in axes] == ["block 2.1", "block 3.1"]
    points = axes[0].lines[0]  # a point per nonzero scale, then the no-scale line
    assert len(points.get_xdata()) == 2 and len(axes[0].lines) >= 2
    table = analysis.accuracy_table(ds)
    assert list(table.columns) == ["0% (224 px)", "10% (231 px)", "20% (205 px)"]
    assert table.loc[("3.1", "invariant"), "10% (231 px)"] == 58.0
    assert table.attrs["rejected_draws"] == {"2.1": 2, "3.1": 7}
