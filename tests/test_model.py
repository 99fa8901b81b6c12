"""Taps against a by-hand reading of plain torchvision forwards (hooks that clone)."""
import urllib.error

import pytest
import torch
import torchvision
from click.testing import CliRunner
from lucent.optvis.render import ModuleHook

from repro import model as taps_model
from repro.cli import main
from repro.errors import UserError
from repro.model import ModelSpec, load_model, run
from helpers import randomize_batchnorm


def reference_taps(model, x):
    """I, B, O of every block from one plain torchvision forward with cloning hooks."""
    seen, handles = {}, []
    named = taps_model.blocks(model)
    last_bn = "bn3" if isinstance(next(iter(named.values())), torchvision.models.resnet.Bottleneck) else "bn2"
    for name, block in named.items():
        handles.append(block.register_forward_pre_hook(
            lambda m, args, name=name: seen.__setitem__((name, "input"), args[0].clone())))
        handles.append(getattr(block, last_bn).register_forward_hook(
            lambda m, args, out, name=name: seen.__setitem__((name, "B"), out.clone())))
        if block.downsample is not None:
            handles.append(block.downsample.register_forward_hook(
                lambda m, args, out, name=name: seen.__setitem__((name, "down"), out.clone())))
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    reference, previous_sum = {}, None
    for name, block in named.items():
        identity = seen[(name, "down")] if block.downsample is not None else seen[(name, "input")]
        summed = seen[(name, "B")] + identity
        if block.downsample is not None:
            reference[(name, "I")] = seen[(name, "down")]
        else:
            reference[(name, "I")] = seen[(name, "input")] if previous_sum is None else previous_sum
        reference[(name, "B")] = seen[(name, "B")]
        reference[(name, "O")] = summed
        previous_sum = summed
    return reference, logits


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_every_tap_equals_a_by_hand_reading_of_the_block(arch):
    model, _ = load_model(ModelSpec(arch=arch, weights="random:3"))
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    reference, logits = reference_taps(model, x)
    with torch.no_grad():
        values, ours_logits = run(model, x, list(reference))
    assert torch.equal(ours_logits, logits)
    for key, expected in reference.items():
        torch.testing.assert_close(values[key], expected, rtol=0, atol=1e-5, msg=f"tap {key}")
    # The B summand really is pre-ReLU: it has negative values the block output cannot have.
    assert (values[("1.1", "B")] < 0).any()


def test_center_values_and_stopping():
    model, _ = load_model(ModelSpec(weights="random:0"))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        full, _ = run(model, x, [("3.1", "B")])
        center, logits = run(model, x, [("3.1", "B")], center=True, stop=True)
    assert logits is None
    assert full[("3.1", "B")].shape == (1, 256, 14, 14)
    assert torch.equal(center[("3.1", "B")], full[("3.1", "B")][:, :, 7, 7])


def test_aliased_taps_reproduce_a_by_reference_hook():
    model, _ = load_model(ModelSpec(weights="random:5"))
    randomize_batchnorm(model, seed=2)
    x = torch.randn(2, 3, 64, 64)
    hooks = {name: ModuleHook(module) for name, module in [("1.1 bn2", model.layer1[1].bn2),
                                                           ("2.0 bn2", model.layer2[0].bn2),
                                                           ("2.0 down", model.layer2[0].downsample)]}
    with torch.no_grad():
        model(x)
        for hook in hooks.values():
            hook.close()  # our own forward calls the same modules; keep what torchvision's forward left
        aliased, _ = run(model, x, [("1.1", "B"), ("2.0", "B"), ("2.0", "I"), ("1.1", "O")], aliased=True)
        true, _ = run(model, x, [("1.1", "O"), ("2.0", "I")])
    assert torch.equal(aliased[("1.1", "B")], hooks["1.1 bn2"].features)
    assert torch.equal(aliased[("2.0", "B")], hooks["2.0 bn2"].features)
    # What the by-reference hook holds is the post-ReLU output, not bn2.
    assert torch.equal(hooks["1.1 bn2"].features, torch.relu(true[("1.1", "O")]))
    assert torch.equal(aliased[("1.1", "O")], torch.relu(true[("1.1", "O")]))
    # The downsample branch is not modified in place, so its tap stays true even when aliased.
    assert torch.equal(aliased[("2.0", "I")], true[("2.0", "I")])
    assert torch.equal(hooks["2.0 down"].features, true[("2.0", "I")])


def test_edit_output_replaces_only_that_blocks_output():
    model, _ = load_model(ModelSpec(weights="random:0"))
    x = torch.randn(1, 3, 64, 64)

    def zero_channel_3(o):
        o = o.clone()
        o[:, 3] = 0.0
        return o

    with torch.no_grad():
        plain, _ = run(model, x, [("2.1", "B"), ("2.1", "O")])
        edited, _ = run(model, x, [("2.1", "B"), ("2.1", "O")], edit_output={"2.1": zero_channel_3})
    assert torch.equal(plain[("2.1", "B")], edited[("2.1", "B")])
    assert (edited[("2.1", "O")][:, 3] == 0).all()
    assert torch.equal(plain[("2.1", "O")][:, 4:], edited[("2.1", "O")][:, 4:])


def test_compact_resnet_keeps_block_structure_and_names():
    model, _ = load_model(ModelSpec(weights="random:0", widths=(8, 8, 16, 16), stem="small", num_classes=10))
    assert list(taps_model.blocks(model)) == ["1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1"]
    assert [name for name, b in taps_model.blocks(model).items() if b.downsample is not None] == ["2.0", "3.0", "4.0"]
    x = torch.randn(2, 3, 32, 32)
    reference, logits = reference_taps(model, x)
    with torch.no_grad():
        values, ours = run(model, x, list(reference))
    assert torch.equal(ours, logits)
    for key in reference:
        torch.testing.assert_close(values[key], reference[key], rtol=0, atol=1e-6)


def test_weights_from_a_path_with_hash(tmp_path):
    model, record = load_model(ModelSpec(weights="random:7"))
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    sha = taps_model.file_sha256(path)
    loaded, loaded_record = load_model(ModelSpec(weights=str(path), weights_sha256=sha))
    assert loaded_record["weights_sha256"] == record["weights_sha256"]
    assert loaded_record["weights_file_sha256"] == sha
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        load_model(ModelSpec(weights=str(path), weights_sha256="0" * 64))
    with pytest.raises(UserError, match="not found"):
        load_model(ModelSpec(weights=str(tmp_path / "missing.pt")))
    with pytest.raises(UserError, match="unknown model"):
        load_model(ModelSpec(arch="vgg16", weights="random:0"))


def test_imagenet_weights_without_network_suggest_a_path(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    result = CliRunner().invoke(main, ["fz", "--profile", "paper", "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2
    assert "--weights PATH" in result.output


@pytest.mark.parametrize("args, message", [
    (["taps", "--model", "resnet9"], "unknown model"),
    (["fz", "--profile", "nonexistent", "--store", "S"], "unknown profile"),
])
def test_bad_input_is_one_clear_message_and_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_taps_command_lists_shapes_and_centers():
    result = CliRunner().invoke(main, ["taps", "--model", "resnet18"])
    assert result.exit_code == 0, result.output
    assert "3.1 B   256 x  14 x  14  center (7, 7)" in result.output
    assert "2.1 I   128 x  28 x  28  center (14, 14)  same tensor as 2.0:O" in result.output
    assert "4.1 O   512 x   7 x   7  center (3, 3)" in result.output
