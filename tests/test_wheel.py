"""The built wheel, installed (not editable) into a fresh venv, works from a directory outside the source tree:
profiles, published numbers, toy checkpoints, the documents and report templates ship with it, outputs go to the
cwd."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def run(command: list, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout + done.stderr


def fresh_venv(root: Path, wheel: Path) -> Path:
    """A venv holding only the wheel; its dependencies are this interpreter's (a .pth, no download)."""
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv], root)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel], root)
    return venv


def test_installed_wheel_runs_the_tiny_pipeline_and_report_from_another_directory(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
         tmp_path / "dist", ROOT], ROOT)
    venv = fresh_venv(tmp_path, next((tmp_path / "dist").glob("residual_stream-*.whl")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    where = run([venv / "bin" / "python", "-c", "import repro, report; print(repro.__file__, report.__file__)"],
                elsewhere, env)
    assert str(ROOT) not in where and str(venv) in where  # the installed copy, not the checkout
    repro = venv / "bin" / "repro"
    shown = run([repro, "profile", "show", "toy"], elsewhere, env)
    assert "toy_resnet18.pt" in shown and str(ROOT) not in shown
    run([repro, "pipeline", "--profile", "tiny", "--store", "S"], elsewhere, env)
    output = run([repro, "report", "--store", "S", "--out", "R"], elsewhere, env)
    assert "torch.jit.script" not in output
    assert (elsewhere / "S" / "zarr.json").is_file() and (elsewhere / "R" / "_site" / "index.html").is_file()
    assert (elsewhere / "R" / "_site" / "method.html").is_file()  # docs/method.md, shipped and rendered
    assert (elsewhere / "build" / "tiny-data").is_dir()  # the profile's toy.data_dir, under the cwd
    package = next((venv / "lib").glob("python*/site-packages/repro"))
    assert {"method.md", "store.md"} <= {path.name for path in (package / "_shipped" / "docs").glob("*.md")}
    assert not list(package.rglob("*.zarr")) and not (package.parent / "build").exists()
