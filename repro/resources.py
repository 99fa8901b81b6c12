"""Files the package ships: profiles, the published numbers, the toy checkpoints, the documents.

A source checkout reads them where they lie (``profiles/``, ``data/published/``, ``data/toy/``, ``docs/``); a
built wheel carries the same folders as ``repro/_shipped/<kind>`` (mapped in ``pyproject.toml``), read through
``importlib.resources``, so an installed package works from any directory.
"""
from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
SOURCE_PATHS = {"profiles": "profiles", "published": "data/published", "toy": "data/toy",
                "docs": "docs"}  # kind → checkout path


def shipped(kind: str) -> Path:
    """The folder of one kind of shipped file: the wheel's copy when installed, else the checkout's."""
    packaged = Path(str(resources.files("repro") / "_shipped" / kind))
    return packaged if packaged.is_dir() else SOURCE_ROOT / SOURCE_PATHS[kind]


def published(name: str) -> dict:
    """A paper's transcribed numbers (``data/published/<name>.toml``)."""
    return tomllib.loads((shipped("published") / f"{name}.toml").read_text())


def document(name: str) -> str:
    """The text of a shipped document (``docs/<name>``, e.g. ``method.md``)."""
    return (shipped("docs") / name).read_text(encoding="utf-8")


def locate(text: str) -> Path:
    """A path a profile names (weights, checkpoints): absolute as given, else relative to the current
    directory, else the shipped file it names (``data/toy/x.pt`` → the package's toy ``x.pt``)."""
    path = Path(text).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    for kind, source in SOURCE_PATHS.items():
        if path.parts[:len(Path(source).parts)] == Path(source).parts:
            return shipped(kind).joinpath(*path.parts[len(Path(source).parts):])
    return path.resolve()


CACHE_ENV = "RESIDUAL_STREAM_CACHE"


def cache_dir() -> Path:
    """Where derived, rebuildable facts are kept between runs (content hashes of input files):
    ``$RESIDUAL_STREAM_CACHE``, else ``$XDG_CACHE_HOME/residual-stream``, else ``~/.cache/residual-stream``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "residual-stream"


def output(text: str) -> Path:
    """A folder a profile names for outputs (``toy.data_dir``): absolute as given, else under the current
    directory, never inside the installed package."""
    return Path(text).expanduser().resolve()
