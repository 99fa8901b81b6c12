"""Stable hashes: of JSON-able values (store identities, settings digests, report cache keys) and of files."""
from __future__ import annotations

import hashlib
import json

import xarray as xr

# torchvision's IMAGENET1K_V1 files are named by the first 8 hex digits of their SHA-256; here, not beside the
# model, so that the report recognizes them without loading torch.
IMAGENET_FILE_SHA256_PREFIX = {"resnet18": "f37072fd", "resnet34": "b627a593", "resnet50": "0676ba61"}


def digest(value, length: int | None = 16) -> str:
    """SHA-256 of ``value`` as sorted-key JSON (non-JSON values by ``str``), its first ``length`` hex digits
    (all with None)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_sha256(path) -> str:
    """A file's SHA-256, read in 1 MiB pieces."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            sha.update(piece)
    return sha.hexdigest()


def group_digest(store_path, group: str) -> str:
    """``dataset_digest`` of one group of a zarr store."""
    return dataset_digest(xr.open_zarr(store_path, group=group, consolidated=False).load())


def dataset_digest(dataset) -> str:
    """SHA-256 of every variable's values and coordinates of an xarray Dataset (attrs left out): equal
    digests mean equal arrays, NaNs included."""
    import numpy as np

    sha = hashlib.sha256()
    for name in sorted(dataset.variables):
        values = dataset[name].values
        sha.update(name.encode())
        sha.update("\0".join(map(str, values.ravel())).encode() if values.dtype == object
                   else np.ascontiguousarray(values).tobytes())
    return sha.hexdigest()
