"""Shared test fixtures.

``image_folder``: a small ImageFolder generated with PIL in a fresh temporary directory (one per test,
so a test may add or break files). Layout, in torchvision's order (sorted class folders, sorted files)::

    ROOT/n01440764/img0.JPEG ... img3.JPEG   label 0
    ROOT/n01443537/img0.JPEG ... img3.JPEG   label 1
    ROOT/n01484850/img0.JPEG ... img3.JPEG   label 2

12 JPEGs of different sizes and aspect ratios (landscape, portrait, square; odd and even sides, so
Resize/CenterCrop rounding is exercised), smooth random content, one of them grayscale. The fixture
returns the root ``Path``; ``IMAGE_FOLDER_SIZES`` holds the (width, height) of each file, and
``make_image_folder(root, sizes)`` builds another layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# {class folder: [(width, height), ...]}; files are named img0.JPEG, img1.JPEG, ... in this order.
IMAGE_FOLDER_SIZES = {
    "n01440764": [(40, 30), (30, 40), (37, 37), (64, 48)],
    "n01443537": [(50, 41), (33, 60), (41, 41), (45, 39)],
    "n01484850": [(38, 52), (70, 37), (48, 48), (39, 45)],
}
GRAYSCALE_IMAGE = "n01443537/img2.JPEG"


def smooth_random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Blurry colour blobs plus a little noise: natural enough for JPEG, different for every seed."""
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noise = rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


def make_image_folder(root: Path, sizes: dict = IMAGE_FOLDER_SIZES, seed: int = 0,
                      grayscale: tuple[str, ...] = (GRAYSCALE_IMAGE,)) -> Path:
    """Write an ImageFolder of JPEGs with the given {class: [(width, height), ...]} under ``root``."""
    rng = np.random.default_rng(seed)
    for folder, shapes in sizes.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for number, (width, height) in enumerate(shapes):
            relative = f"{folder}/img{number}.JPEG"
            image = smooth_random_image(rng, width, height)
            if relative in grayscale:
                image = image.convert("L")
            image.save(root / relative, quality=90)
    return root


@pytest.fixture
def image_folder(tmp_path_factory) -> Path:
    """A fresh 3-class, 12-JPEG ImageFolder (see the module docstring)."""
    return make_image_folder(tmp_path_factory.mktemp("images") / "val")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Small convolutions run fastest on one thread, and a busy shared machine makes two threads stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def scheduler():
    """(address, client) of one LocalCluster of two single-thread worker processes, shared by the tests."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    yield cluster.scheduler_address, client
    client.close()
    cluster.close()
