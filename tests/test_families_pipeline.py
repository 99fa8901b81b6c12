"""End to end on other families: `repro pipeline` then `repro report` on the tiny ConvNeXt and ViT profiles,
and the pipeline on a user's model named as module:callable."""
import math

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from analyses import alignment_bootstrap as ab
from residual_stream.cli import main
from repro import profiles

pytestmark = pytest.mark.slow

USER_MODEL = """
[model]
arch = "user_models:two_stage_convnext"
blocks = ["1.0", "2.0"]

[fz.jitter]
"1.0" = { I = 0, B = 0, O = 0 }
"2.0" = { I = 0, B = 0, O = 0 }

[ablation]
blocks = ["2.0"]

[ablation.screen_tolerance]
"2.0" = 0.0

[alignment]
blocks = ["1.0", "2.0"]
"""


def here_profile(root, base: str, extra: str = "") -> str:
    """A profile on ``base`` whose toy images live under ``root`` (as tests/test_pipeline.py makes its own)."""
    path = root / f"{base}-here.toml"
    path.write_text(f'base = "{profiles.PROFILE_DIR / base}.toml"\nname = "{base}"\n{extra}\n'
                    f'[toy]\ndata_dir = "{root / "data"}"\n')
    return str(path)


def run_pipeline(root, profile: str, report: bool = True):
    store, out = root / "run.zarr", root / "report"
    runner = CliRunner()
    result = runner.invoke(main, ["pipeline", "--profile", profile, "--store", str(store)])
    assert result.exit_code == 0, result.output + result.stderr
    if report:
        built = runner.invoke(main, ["report", "--store", str(store), "--out", str(out)])
        assert built.exit_code == 0, built.output + built.stderr
    return store, out, result


@pytest.fixture(scope="module", params=["tiny_convnext", "tiny_vit"])
def built(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    store, out, result = run_pipeline(root, here_profile(root, request.param))
    return request.param, store, out, result


def test_every_stage_lands_and_the_report_builds(built):
    name, store, out, _ = built
    for group in ("fz", "fz_channel", "natural", "image_cache", "responses", "metrics", "ablation", "alignment"):
        assert xr.open_zarr(store, group=group).attrs["complete"], group
    assert (out / "_site" / "index.html").is_file()
    arch = profiles.load(name)["model"]["arch"]  # the title names the store's network, not the papers'
    assert f"Residual stream of {arch}" in (out / "_site" / "index.html").read_text()
    assert f'title: "Residual stream of {arch}"' in (out / "_quarto.yml").read_text()


def test_the_metrics_have_a_mix_ratio_for_every_block(built):
    name, store, _, _ = built
    metrics = xr.open_zarr(store, group="metrics").load()
    assert list(metrics.block.values) == profiles.load(name)["model"]["blocks"]
    mix = metrics.mix.sel(stimulus_set="fz").where(metrics.valid)
    assert bool(mix.notnull().any(("seed", "channel")).all()), mix.notnull().sum(("seed", "channel"))


@pytest.mark.parametrize("group", ["fz", "fz_channel"])
def test_most_fzs_raise_their_objective(built, group):
    _, store, _, _ = built
    fz = xr.open_zarr(store, group=group).load()
    raised = (fz.final_objective > fz.initial_objective).where(fz.valid)
    assert float(raised.mean()) > 0.8


def test_the_weight_columns_follow_the_family(built, capsys):
    name, store, _, result = built
    metrics = xr.open_zarr(store, group="metrics").load()
    weights = metrics[["bn2_weight_abs", "conv2_weight_mean_abs"]].where(metrics.valid)
    if name == "tiny_vit":  # no per-channel scale: NaN, the reason recorded per block and said once
        assert bool(weights.to_array().isnull().all())
        assert set(metrics.attrs["weights_missing"]) == set(metrics.block.values)
        assert all("no per-channel scale" in reason for reason in metrics.attrs["weights_missing"].values())
        assert result.stderr.count("weight columns") == 1
    else:  # the layer scale and the last Linear
        assert bool(weights.to_array().where(metrics.valid).notnull().sum() == 2 * metrics.valid.sum())
        assert metrics.attrs["weights_missing"] == {} and "layer scale" in metrics.attrs["weights_note"]


def test_a_users_model_runs_the_tiny_pipeline(tmp_path):
    store, _, _ = run_pipeline(tmp_path, here_profile(tmp_path, "tiny_convnext", USER_MODEL), report=False)
    metrics = xr.open_zarr(store, group="metrics").load()
    assert list(metrics.block.values) == ["1.0", "2.0"]
    assert bool(metrics.mix.sel(stimulus_set="fz").notnull().any())
    assert math.isfinite(float(np.nanmax(metrics.bn2_weight_abs.values)))


def test_a_vit_refuses_unpadded_fz_taps_in_one_line(tmp_path):
    unpadded = '[fz.jitter]\n"0.attn" = { I = 0, B = 4, O = 4 }\n'
    result = CliRunner().invoke(main, ["pipeline", "--profile", here_profile(tmp_path, "tiny_vit", unpadded),
                                                       "--store", str(tmp_path / "run.zarr")])
    assert result.exit_code == 2, result.output
    assert "0.attn:I" in result.stderr and "pad_from_jitter" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


TWIN = """
[alignment]
blocks = ["1.1", "2.1", "3.1", "4.1"]
partner_profile = "tiny_convnext"
partner_weights = ""
partner_blocks = ["1.0", "2.0", "3.1", "4.0"]
"""


def test_a_resnet_aligns_with_a_convnext_twin(tmp_path):
    """The alignment of two networks with a partner of another family, widths and map sizes: the i-th blocks
    are matched and get every metric."""
    from repro.pipeline import toy_images

    profile = here_profile(tmp_path, "tiny", TWIN)
    images = toy_images(profiles.load(profile))
    store = str(tmp_path / "twin.zarr")
    runner = CliRunner()
    for command in (["natural", "--images", str(images)], ["alignment"]):
        result = runner.invoke(main, [*command, "--profile", profile, "--store", store])
        assert result.exit_code == 0, result.output
    alignment = xr.open_zarr(store, group="alignment").load()
    assert list(alignment.pair.values[:4]) == ["1.1~1.0", "2.1~2.0", "3.1~3.1", "4.1~4.0"]
    matching = alignment.network.isel(pair=slice(0, 4)).sel(representation="raw", metric=list(ab.METRICS))
    assert bool(matching.notnull().all()), matching
    assert alignment.attrs["partner_state_sha256"]
    from analyses.alignment_figures import partner_name
    assert partner_name(alignment.attrs) == "tiny_convnext"  # the figure's title names the partner


def test_partner_blocks_must_pair_with_the_blocks_compared(tmp_path):
    uneven = TWIN.replace('["1.0", "2.0", "3.1", "4.0"]', '["1.0", "2.0"]')
    result = CliRunner().invoke(main, ["alignment", "--profile", here_profile(tmp_path, "tiny", uneven),
                                       "--store", str(tmp_path / "twin.zarr")])
    assert result.exit_code == 2 and "pair them one to one" in result.output


def test_a_partner_of_one_fixed_image_size_refuses_another_in_one_line(tmp_path):
    """A ViT partner (32 px only) shown 48 px natural images: one line before anything is computed."""
    other_size = TWIN.replace('partner_profile = "tiny_convnext"', 'partner_profile = "tiny_vit"').replace(
        '["1.0", "2.0", "3.1", "4.0"]', '["0.attn", "0.mlp", "1.attn", "1.mlp"]') + "[natural]\nresize = 55\ncrop = 48\n"
    store = tmp_path / "twin.zarr"
    result = CliRunner().invoke(main, ["alignment", "--profile", here_profile(tmp_path, "tiny", other_size),
                                       "--store", str(store)])
    assert result.exit_code == 2, result.output
    assert "runs at 32 px only" in result.stderr and "natural.crop = 48 px" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not store.exists()
