"""The one device decision: resolved once, passed to every stage, never moving the caller's model. CUDA is
mocked here (no test needs a GPU); benchmarks/gpu_check.py is the check on a real one."""
import pytest
import torch
from click.testing import CliRunner

from repro import device as devices
from repro import ablate, alignment, fz, metrics, natural, pipeline
from repro.cli import main
from repro.errors import UserError
from repro.model import ModelSpec, load_model


@pytest.fixture
def cuda_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_is_cuda_when_present_and_cpu_otherwise(monkeypatch, cuda_present):
    assert devices.resolve("auto") == torch.device("cuda")
    assert devices.resolve("cuda:1") == torch.device("cuda:1")
    assert devices.resolve("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve("auto") == torch.device("cpu")
    assert devices.resolve(None) == torch.device("cpu")


def test_cuda_without_cuda_and_unknown_devices_are_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device is available"):
        devices.resolve("cuda")
    with pytest.raises(UserError, match="expected one of auto, cpu, cuda"):
        devices.resolve("tpu")


@pytest.mark.parametrize("command", [["fz", "--profile", "tiny"], ["natural", "--profile", "tiny"],
                                     ["ablate", "--profile", "tiny"], ["metrics"], ["pipeline", "--profile", "tiny"]])
def test_device_cuda_without_cuda_is_one_line_exit_2_and_writes_nothing(command, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store = tmp_path / "s.zarr"
    if command == ["metrics"]:  # metrics reads an existing store: make one with nothing in it but the root
        from repro import profiles
        from repro.store import Store

        profile = profiles.load("tiny")
        Store.create_or_open(store, profile, load_model(ModelSpec.from_profile(profile["model"]))[1])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(main, [*command, "--store", str(store), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: --device cuda: no CUDA device is available"), result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_the_cli_resolves_once_and_passes_the_device_to_every_stage(monkeypatch, cuda_present, tmp_path):
    seen = []
    calls = []
    real_resolve = devices.resolve

    def counting_resolve(name="auto"):
        calls.append(name)
        return real_resolve(name)

    monkeypatch.setattr(devices, "resolve", counting_resolve)
    for module in (fz, natural, metrics, ablate, alignment):
        monkeypatch.setattr(module, "run", lambda *args, device=None, _m=module.__name__, **kw: seen.append((_m, device)))
    monkeypatch.setattr(pipeline, "images_for", lambda profile: tmp_path)
    result = CliRunner().invoke(main, ["pipeline", "--profile", "tiny", "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0, result.output
    assert calls == ["auto"]
    assert [name for name, _ in seen] == ["repro.fz", "repro.fz", "repro.natural", "repro.metrics", "repro.ablate",
                                          "repro.alignment"]
    assert all(device == torch.device("cuda") for _, device in seen)


def test_place_never_moves_the_callers_model():
    model, _ = load_model(ModelSpec(weights="random:0", widths=(8, 8, 16, 16), stem="small", num_classes=10))
    same = devices.place(model, torch.device("cpu"))
    assert same is model
    elsewhere = devices.place(model, torch.device("meta"))  # any other device: a copy goes there
    assert elsewhere is not model and next(elsewhere.parameters()).device.type == "meta"
    assert next(model.parameters()).device.type == "cpu"


def test_fz_prepare_copies_to_the_device_and_refuses_lucents_impossible_case(monkeypatch):
    model, _ = load_model(ModelSpec(weights="random:0", widths=(8, 8, 16, 16), stem="small", num_classes=10))
    prepared = fz.prepare(model, "cpu")
    assert prepared is not model and not any(p.requires_grad for p in prepared.parameters())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match="Lucent's colour decorrelation always runs on CUDA"):
        fz.prepare(model, "cpu")


def test_lucent_on_points_every_lucent_module_at_the_device_and_restores_them():
    from lucent.optvis import param, transform

    before = [transform.device, param.spatial.device]
    with devices.lucent_on(torch.device("meta")):
        assert transform.device == param.spatial.device == torch.device("meta")
    assert [transform.device, param.spatial.device] == before
