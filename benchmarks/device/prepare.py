"""Download the wheels the GPU machine lacks into ``.whl/`` and check that they fit what travels with it.

The device image (Python 3.12, torch 2.11 / torchvision 0.26, no network) already holds numpy, scipy, pandas,
xarray, click, matplotlib, scikit-learn, statsmodels and most of the scientific stack (``DEVICE_HAS``, as
listed for that image). What it lacks (the store's zarr stack, Dask, Lucent and what they import) is carried
as wheels for cp312 / manylinux x86-64, pinned to the versions tested here:

    python benchmarks/device/prepare.py            # download into .whl/, check closure and size
    python benchmarks/device/prepare.py --check    # only check an existing .whl/

Exit 2 with one line on stderr when the wheels exceed the limit (64 MiB) or a requirement of a carried
wheel is neither carried nor on the image.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

LIMIT_MIB = 64.0
ROOT = Path(__file__).resolve().parents[2]

# Pinned to the versions the tests pass with here; only the packages the device image lacks.
CARRY = [
    "torch-lucent==0.1.8", "kornia==0.4.1", "decorator==5.3.1", "future==1.0.0",
    "ipython==9.18.1", "ipython-pygments-lexers==1.1.1", "jedi==0.20.1", "parso==0.8.7",
    "matplotlib-inline==0.2.2", "pexpect==4.9.0", "ptyprocess==0.7.0", "prompt-toolkit==3.0.53",
    "wcwidth==0.9.4", "stack-data==0.6.3", "executing==2.3.0", "asttokens==3.0.2", "pure-eval==0.2.4",
    "traitlets==5.16.1",
    "zarr==3.1.6", "numcodecs==0.16.6", "donfig==0.8.1.post1", "google-crc32c==1.9.0",
    "dask==2026.8.0", "distributed==2026.8.0", "partd==1.4.2", "locket==1.0.0", "tblib==3.2.2",
    "tornado==6.6.1", "zict==3.0.0", "mdit-py-plugins==0.7.0",
]

# Python packages of the device image (its package list); torch, torchvision and CUDA come with it.
DEVICE_HAS = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn
scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp
""".split())

# Requirements of carried wheels that nothing here imports (Lucent's own test tooling).
NOT_IMPORTED = {"coveralls"}

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
# The device's interpreter, for evaluating the wheels' environment markers.
DEVICE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def total_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.glob("*.whl")) / 2**20


def tree_mib(root: Path = ROOT) -> float:
    """The tracked files' size: they travel with the wheels."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, text=True)
    paths = [root / name for name in listed.stdout.split("\0") if name] if listed.returncode == 0 else []
    return sum(path.stat().st_size for path in paths if path.is_file()) / 2**20


def check_size(folder: Path, limit_mib: float = LIMIT_MIB, tree: float = 0.0) -> str | None:
    """None when the wheels (plus ``tree`` MiB of working tree) fit, else the one-line reason."""
    size = total_mib(folder)
    if size + tree > limit_mib:
        return (f"prepare: the wheels in {folder} take {size:.1f} MiB (+{tree:.1f} MiB of working tree), "
                f"over the {limit_mib:.0f} MiB that travels")
    return None


def wheel_requirements(wheel: Path) -> tuple[str, list[str]]:
    """(distribution name, names it requires on the device's interpreter, extras left out)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
    needed = []
    for line in re.findall(r"^Requires-Dist: (.+)$", text, re.M):
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(DEVICE_ENV):
            needed.append(requirement.name)
    return name, needed


def check_closure(folder: Path) -> str | None:
    """None when every carried wheel's requirements are carried or on the image, else the one-line reason."""
    wheels = sorted(folder.glob("*.whl"))
    found = [wheel_requirements(wheel) for wheel in wheels]
    carried = {normalize(name) for name, _ in found}
    names = [normalize(name) for name, _ in found]
    doubles = sorted({n for n in names if names.count(n) > 1})
    if doubles:
        return f"prepare: more than one wheel of {', '.join(doubles)} in {folder}; keep one version of each"
    missing = sorted({f"{normalize(req)} (for {name})" for name, reqs in found for req in reqs
                      if normalize(req) not in carried | DEVICE_HAS | NOT_IMPORTED})
    if missing:
        return f"prepare: needed on the device but neither carried nor on its image: {', '.join(missing)}"
    wanted = {normalize(spec.split("==")[0]) for spec in CARRY}
    absent = sorted(wanted - carried)
    if absent:
        return f"prepare: not downloaded yet: {', '.join(absent)}"
    return None


def download(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + CARRY, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".whl")
    parser.add_argument("--check", action="store_true", help="check the folder only, download nothing")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = parser.parse_args(argv)
    if not args.check:
        download(args.dir)
    tree = tree_mib()
    for problem in (check_size(args.dir, args.limit_mib, tree), check_closure(args.dir)):
        if problem:
            print(problem, file=sys.stderr)
            return 2
    count = len(list(args.dir.glob("*.whl")))
    print(f"prepare: {count} wheels, {total_mib(args.dir):.1f} MiB + {tree:.1f} MiB of working tree, within "
          f"{args.limit_mib:.0f} MiB, in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
