"""The GPU run's script and its wheel preparation, checked without network or GPU."""
from __future__ import annotations

import importlib.util
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device" / "run.sh"


def load_prepare():
    spec = importlib.util.spec_from_file_location("device_prepare", ROOT / "benchmarks" / "device" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_wheel(folder: Path, name: str, requires: list[str], padding: int = 0) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        lines = [f"Name: {name}", "Version: 1.0"] + [f"Requires-Dist: {r}" for r in requires]
        archive.writestr(f"{name}-1.0.dist-info/METADATA", "\n".join(lines) + "\n")
        if padding:
            archive.writestr(f"{name}/data.bin", io.BytesIO(bytes(padding)).getvalue(), compress_type=zipfile.ZIP_STORED)
    return path


def test_run_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_run_script_refuses_unknown_option(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--no-such-option"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)})
    assert result.returncode == 2 and "unknown option" in result.stderr


def test_size_check_refuses_over_the_limit(tmp_path):
    prepare = load_prepare()
    make_wheel(tmp_path, "big", [], padding=2 * 2**20)
    assert prepare.check_size(tmp_path, limit_mib=64) is None
    problem = prepare.check_size(tmp_path, limit_mib=1)
    assert problem.startswith("prepare:") and "\n" not in problem
    assert prepare.check_size(tmp_path, limit_mib=64, tree=63) is not None  # the working tree counts too


def test_main_exits_2_with_one_line(tmp_path, capsys):
    prepare = load_prepare()
    make_wheel(tmp_path, "big", [], padding=2 * 2**20)
    assert prepare.main(["--check", "--dir", str(tmp_path), "--limit-mib", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "MiB" in err


def test_closure_names_what_is_missing(tmp_path, monkeypatch):
    prepare = load_prepare()
    monkeypatch.setattr(prepare, "CARRY", ["alpha==1.0"])
    make_wheel(tmp_path, "alpha", ["numpy>=1", "beta", 'gamma; sys_platform == "win32"', 'delta; extra == "x"'])
    problem = prepare.check_closure(tmp_path)
    assert "beta (for alpha)" in problem and "gamma" not in problem and "delta" not in problem
    make_wheel(tmp_path, "beta", ["torch"])
    assert prepare.check_closure(tmp_path) is None


@pytest.mark.parametrize("spec", load_prepare().CARRY)
def test_carried_packages_are_pinned_and_not_on_the_image(spec):
    prepare = load_prepare()
    name, _, version = spec.partition("==")
    assert version and prepare.normalize(name) not in prepare.DEVICE_HAS
    assert not prepare.normalize(name).startswith(("torch==", "nvidia")) and name not in ("torch", "torchvision")
