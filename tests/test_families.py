"""Tap adapters of every family against independent readings of plain forwards (hooks that clone)."""
import urllib.error

import pytest
import torch
from click.testing import CliRunner
from torchvision.models.resnet import Bottleneck

from repro import model as taps_model
from repro import profiles
from repro.cli import main
from repro.errors import UserError
from repro.model import TAPS, ModelSpec, load_model, run
from helpers import randomize_batchnorm

SIZE = 32
MODELS = {
    "resnet18": ModelSpec(arch="resnet18", weights="random:1", widths=(8, 8, 16, 16), stem="small", num_classes=10),
    "bottleneck": ModelSpec(arch="resnet50", weights="random:2", widths=(4, 4, 8, 8), stem="small", num_classes=10),
    "resnext": ModelSpec(arch="user_models:small_resnext", weights="random:3"),
    "wide": ModelSpec(arch="user_models:small_wide_resnet", weights="random:3", family="resnet"),
    "convnext": ModelSpec(arch="repro.zoo:tiny_convnext", weights="random:4"),
    "vit": ModelSpec(arch="repro.zoo:tiny_vit", weights="random:5"),
}
FAMILY = {"resnet18": "resnet", "bottleneck": "resnet", "resnext": "resnet", "wide": "resnet",
          "convnext": "convnext", "vit": "vit"}


def built(name):
    model, _ = load_model(MODELS[name])
    randomize_batchnorm(model)
    return model


def images(n=2):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def hook(handles, module, seen, key, *, pre=False, pick=lambda value: value):
    """Keep a clone of the module's input (pre) or output at the moment the hook runs."""
    if pre:
        handles.append(module.register_forward_pre_hook(lambda m, args: seen.__setitem__(key, args[0].clone())))
    else:
        handles.append(module.register_forward_hook(lambda m, args, out: seen.__setitem__(key, pick(out).clone())))


def token_map(tokens):
    """Patch tokens [N, 1 + h*w, C] as [N, C, h, w] (the class token dropped)."""
    n, length, channels = tokens.shape
    side = int(round((length - 1) ** 0.5))
    return tokens[:, 1:].permute(0, 2, 1).reshape(n, channels, side, side)


def resnet_reference(model, seen, handles):
    named = {f"{stage}.{i}": block for stage in range(1, 5) for i, block in enumerate(getattr(model, f"layer{stage}"))}
    for name, block in named.items():
        hook(handles, block, seen, (name, "input"), pre=True)
        hook(handles, block.bn3 if isinstance(block, Bottleneck) else block.bn2, seen, (name, "last_bn"))
        if block.downsample is not None:
            hook(handles, block.downsample, seen, (name, "down"))

    def taps():
        reference, previous_sum = {}, None
        for name, block in named.items():
            down = block.downsample is not None
            identity = seen[(name, "down")] if down else seen[(name, "input")]
            reference[(name, "B")] = seen[(name, "last_bn")]
            reference[(name, "O")] = seen[(name, "last_bn")] + identity
            reference[(name, "I")] = identity if down or previous_sum is None else previous_sum
            previous_sum = reference[(name, "O")]
        return reference
    return taps


def convnext_reference(model, seen, handles):
    named = {}
    for stage, index in enumerate((1, 3, 5, 7), start=1):
        for position, block in enumerate(model.features[index]):
            named[f"{stage}.{position}"] = block
    for name, block in named.items():
        hook(handles, block, seen, (name, "input"), pre=True)
        hook(handles, block.block, seen, (name, "branch"))
        hook(handles, block, seen, (name, "output"))

    def taps():
        reference = {}
        for name, block in named.items():
            reference[(name, "I")] = seen[(name, "input")]
            reference[(name, "B")] = block.layer_scale * seen[(name, "branch")]
            reference[(name, "O")] = seen[(name, "output")]
        return reference
    return taps


def vit_reference(model, seen, handles):
    layers = list(model.encoder.layers)
    for index, layer in enumerate(layers):
        hook(handles, layer.ln_1, seen, (index, "attn_in"), pre=True)
        hook(handles, layer.self_attention, seen, (index, "attn_out"), pick=lambda out: out[0])
        hook(handles, layer.ln_2, seen, (index, "mlp_in"), pre=True)
        hook(handles, layer.mlp, seen, (index, "mlp_out"))
        hook(handles, layer, seen, (index, "output"))

    def taps():
        reference = {}
        for index in range(len(layers)):
            for part, stream, summand, output in (("attn", "attn_in", "attn_out", "mlp_in"),
                                                  ("mlp", "mlp_in", "mlp_out", "output")):
                reference[(f"{index}.{part}", "I")] = token_map(seen[(index, stream)])
                reference[(f"{index}.{part}", "B")] = token_map(seen[(index, summand)])
                reference[(f"{index}.{part}", "O")] = token_map(seen[(index, output)])
        return reference
    return taps


REFERENCES = {"resnet": resnet_reference, "convnext": convnext_reference, "vit": vit_reference}


def reference_taps(name, model, x):
    """Every block's I, B, O from one plain forward ``model(x)`` with hooks on the blocks' own modules."""
    seen, handles = {}, []
    taps = REFERENCES[FAMILY[name]](model, seen, handles)
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    return taps(), logits


@pytest.mark.parametrize("name", list(MODELS))
def test_every_tap_equals_a_hooked_plain_forward(name):
    model, x = built(name), images()
    assert taps_model.family_of(model).name == FAMILY[name]
    reference, logits = reference_taps(name, model, x)
    with torch.no_grad():
        values, ours = run(model, x, list(reference))
    assert set(values) == {(block, tap) for block in taps_model.blocks(model) for tap in TAPS} == set(reference)
    torch.testing.assert_close(ours, logits, rtol=0, atol=1e-6)
    for key, expected in reference.items():
        torch.testing.assert_close(values[key], expected, rtol=1e-5, atol=1e-5, msg=f"{name} tap {key}")
    widths = taps_model.block_widths(model)
    for (block, tap), value in values.items():
        assert value.shape[1] == widths[block]
        same = taps_model.same_tensor(model, block, tap)
        assert torch.equal(values[same], value), (block, tap, same)


@pytest.mark.parametrize("name", list(MODELS))
def test_o_is_i_plus_b(name):
    """O = I + B; in a ResNet block without a downsample branch the identity added is relu(I)."""
    model, x = built(name), images()
    named = taps_model.blocks(model)
    with torch.no_grad():
        values, _ = run(model, x, [(block, tap) for block in named for tap in TAPS])
    for block, module in named.items():
        carried = values[(block, "I")]
        if FAMILY[name] == "resnet" and module.downsample is None:
            carried = torch.relu(carried)
        torch.testing.assert_close(values[(block, "O")], carried + values[(block, "B")], rtol=1e-5, atol=1e-5)
        assert not torch.equal(values[(block, "B")], torch.zeros_like(values[(block, "B")]))


def later_modules(name, model, block):
    """The modules a forward cut after ``block`` must not run: later blocks' and the head's."""
    family = FAMILY[name]
    if family == "resnet":
        named = [b for stage in range(1, 5) for b in getattr(model, f"layer{stage}")]
        position = list(taps_model.blocks(model)).index(block)
        return [*named[position + 1:], model.avgpool, model.fc]
    if family == "convnext":
        stage, position = map(int, block.split("."))
        index = (1, 3, 5, 7)[stage - 1]
        return [*model.features[index][position + 1:], *model.features[index + 1:], model.avgpool, model.classifier]
    layer, part = block.split(".")
    layers = list(model.encoder.layers)
    rest = [layers[int(layer)].ln_2, layers[int(layer)].mlp] if part == "attn" else []
    return [*rest, *layers[int(layer) + 1:], model.encoder.ln, model.heads]


@pytest.mark.parametrize("name", ["resnet18", "bottleneck", "convnext", "vit"])
def test_a_cut_forward_runs_nothing_after_the_tap(name):
    model, x = built(name), images()
    calls = {}
    handles = [module.register_forward_pre_hook(lambda m, args, key=key: calls.__setitem__(key, calls.get(key, 0) + 1))
               for key, module in model.named_modules()]
    ids = {id(module): key for key, module in model.named_modules()}
    try:
        for block in taps_model.blocks(model):
            for tap in TAPS:
                calls.clear()
                with torch.no_grad():
                    values, logits = run(model, x, [(block, tap)], stop=True, center=True)
                assert logits is None and values[(block, tap)].shape == (len(x), taps_model.block_widths(model)[block])
                after = {ids[id(sub)] for module in later_modules(name, model, block) for sub in module.modules()}
                assert after and not after & set(calls), (block, tap, sorted(after & set(calls)))
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", list(MODELS))
def test_output_edits_reach_the_logits(name):
    model, x = built(name), images()
    # the first block: a ViT's logits read the class token, which a patch edit reaches only through attention
    block = list(taps_model.blocks(model))[0]
    with torch.no_grad():
        _, plain = run(model, x)
        _, same = run(model, x, edit_output={block: lambda o: o})
        _, zeroed = run(model, x, edit_output={block: torch.zeros_like})
        _, doubled = run(model, x, edit_output={block: lambda o: torch.cat([o, o])})
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, zeroed)
    # a fanned-out batch is copies of the batch, each image keeping its own (class-token) stream
    torch.testing.assert_close(doubled, torch.cat([plain, plain]), rtol=0, atol=1e-6)


def test_vit_edits_change_only_the_patch_tokens():
    model, x = built("vit"), images()
    seen, handles = {}, []
    hook(handles, model.encoder.layers[1].ln_1, seen, "stream", pre=True)
    with torch.no_grad():
        run(model, x, edit_output={"0.mlp": lambda o: o + 1.0})
        edited = seen["stream"]
        model(x)
    for handle in handles:
        handle.remove()
    assert torch.equal(edited[:, 0], seen["stream"][:, 0])
    torch.testing.assert_close(edited[:, 1:], seen["stream"][:, 1:] + 1.0)


def test_center_is_the_center_patch_token():
    model, x = built("vit"), images()
    with torch.no_grad():
        values, _ = run(model, x, [("1.mlp", "O")], center=True)
        full, _ = run(model, x, [("1.mlp", "O")])
    # 4 x 4 patches: the center (2, 2) is patch 2 * 4 + 2, token 11 after the class token
    assert torch.equal(values[("1.mlp", "O")], full[("1.mlp", "O")][:, :, 2, 2])


def test_aliased_taps_are_resnet_only():
    model = built("convnext")
    with pytest.raises(UserError, match="family convnext"):
        run(model, images(), [("1.0", "B")], aliased=True)


def test_families_are_inferred_declared_or_user_adapters():
    for family in ("", "convnext", "user_models:RenamedConvNeXt"):
        model, _ = load_model(ModelSpec(arch="user_models:plain_convnext", weights="random:0", family=family))
        assert list(taps_model.blocks(model)) == ["1.0", "2.0"]
    assert taps_model.family_of(model).name == "my-convnext"
    # a torchvision model built outside load_model is read by its blocks' classes
    assert taps_model.family_of(taps_model.CompactResNet(Bottleneck, (1, 1, 1, 1), (4, 4, 4, 4), 10)).name == "resnet"


@pytest.mark.parametrize("spec, message", [
    (ModelSpec(arch="user_models:own_blocks", weights="random:0"),
     "block 1.0: class MyBlock is not a known residual block; declare model.family"),
    (ModelSpec(arch="user_models:own_blocks", weights="random:0", family="resnet"),
     "block 1.0: class MyBlock is not a known residual block of family resnet"),
    (ModelSpec(arch="user_models:plain_convnext", weights="random:0", family="vit"), "lacks conv_proj"),
    (ModelSpec(arch="user_models:plain_convnext", weights="random:0", family="user_models:small_resnext"),
     "not a subclass of repro.families.Family"),
    (ModelSpec(arch="user_models:plain_convnext", weights="random:0", family="mlp"), "model.family must be"),
    (ModelSpec(arch="user_models:not_a_model", weights="random:0"), "returned a str, not a torch.nn.Module"),
    (ModelSpec(arch="no_such_module:build", weights="random:0"), "cannot import no_such_module"),
    (ModelSpec(arch="vgg16", weights="random:0"), "unknown model"),
    (ModelSpec(arch="resnext50_32x4d", weights="random:0", widths=(8, 8, 16, 16)), "widths and stem narrow"),
    (ModelSpec(arch="repro.zoo:tiny_vit", weights="imagenet"), "need a torchvision architecture"),
    (ModelSpec(arch="resnet18", weights="IMAGENET1K_V9"), "has no torchvision weights 'IMAGENET1K_V9'"),
])
def test_models_that_cannot_be_read_say_why_in_one_line(spec, message):
    with pytest.raises(UserError, match=message) as error:
        load_model(spec)
    assert "\n" not in error.value.message


def test_torchvision_weights_names_without_network_suggest_a_path(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(UserError, match="DEFAULT weights for resnet18.*--weights PATH"):
        load_model(ModelSpec(arch="resnet18", weights="DEFAULT"))


def test_vit_at_another_image_size_is_one_clear_message():
    with pytest.raises(UserError, match="takes 32 x 32 px images, not 64 x 64"):
        taps_model.describe_taps(built("vit"), 64)


@pytest.mark.parametrize("arch, lines", [
    ("repro.zoo:tiny_convnext", ["(convnext blocks) at 32 px", "1.0 I    16 x   8 x   8  center (4, 4)",
                                 "3.1 I    64 x   2 x   2  center (1, 1)  same tensor as 3.0:O",
                                 "4.0 O   128 x   1 x   1  center (0, 0)"]),
    ("repro.zoo:tiny_vit", ["(vit blocks) at 32 px", "0.attn I    32 x   4 x   4  center (2, 2)",
                            "1.attn I    32 x   4 x   4  center (2, 2)  same tensor as 0.mlp:O",
                            "1.mlp  O    32 x   4 x   4  center (2, 2)"]),
])
def test_taps_command_lists_every_family(arch, lines):
    result = CliRunner().invoke(main, ["taps", "--profile", "tiny", "--model", arch])
    assert result.exit_code == 0, result.output
    for line in lines:
        assert line in result.output


@pytest.mark.parametrize("args, message", [
    (["--model", "repro.zoo:tiny_convnext", "--family", "mlp"], "model.family must be resnet, convnext, vit"),
    (["--model", "repro.zoo:tiny_convnext", "--family", "vit"], "lacks conv_proj"),
    (["--model", "user_models:own_blocks"], "block 1.0: class MyBlock is not a known residual block"),
])
def test_taps_command_refuses_a_bad_family_in_one_line(args, message):
    result = CliRunner().invoke(main, ["taps", "--profile", "tiny", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_profiles_check_the_family_key():
    tiny = profiles.load("tiny")
    assert tiny.model.family == "" and "family" not in tiny["model"]
    assert profiles.override(tiny, {"model.family": "user_models:RenamedConvNeXt"}).model.family
    with pytest.raises(UserError, match="model.family must be"):
        profiles.override(tiny, {"model.family": "not a family"})
    assert ModelSpec.from_profile(profiles.override(tiny, {"model.family": "vit"})["model"]).family == "vit"


# ---------------------------------------------------------------- what the stages read of a family


def test_downsample_blocks_are_those_whose_input_passes_a_layer_of_its_own():
    projected = {name: [block for block in taps_model.blocks(built(name))
                        if taps_model.family_of(built(name)).projects_input(built(name), block)]
                 for name in ("resnet18", "bottleneck", "convnext", "vit")}
    assert projected == {"resnet18": ["2.0", "3.0", "4.0"], "bottleneck": ["1.0", "2.0", "3.0", "4.0"],
                         "convnext": ["2.0", "3.0", "4.0"], "vit": []}


def test_the_weight_columns_read_the_layer_scale_and_last_linear_of_a_convnext_and_none_of_a_vit():
    from repro import metrics

    convnext = built("convnext")
    scale_abs, weight_mean_abs = metrics.block_weights(convnext, "3.1")
    block = taps_model.blocks(convnext)["3.1"]
    assert scale_abs.tolist() == block.layer_scale.abs().flatten().double().tolist()
    assert weight_mean_abs.shape == (64,)
    assert metrics.weight_gaps(convnext, ["1.0", "3.1"]) == {}
    gaps = metrics.weight_gaps(built("vit"), ["0.attn", "1.mlp"])
    assert set(gaps) == {"0.attn", "1.mlp"} and "no per-channel scale" in gaps["1.mlp"]


def test_random_draws_keep_a_resnets_seeds_and_take_any_label():
    from repro.ablate import label_entropy, random_draw

    assert label_entropy("2.1") == [2, 1] and label_entropy("0.mlp") != label_entropy("0.attn")
    assert random_draw(0, "0.mlp", 3, range(32), 4) == random_draw(0, "0.mlp", 3, range(32), 4)
