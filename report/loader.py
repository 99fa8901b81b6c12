"""The store's datasets as the spec selects them (``report.spec.Selection``), each opened once."""
from __future__ import annotations

from typing import Mapping

import xarray as xr


class Loader:
    """Selected datasets of one store, each opened once; small ones (metrics, responses, ablation) are read
    into memory, large ones (images, natural activations) stay lazy."""

    IN_MEMORY_BYTES = 256 * 2**20

    def __init__(self, store):
        self.store = store
        self._opened: dict[tuple, xr.Dataset | None] = {}

    def load(self, selection) -> xr.Dataset | None:
        key = (selection.group, tuple(sorted(selection.sel.items())))
        if key not in self._opened:
            dataset = self._open(selection.group) if self.store.has(selection.group) else None
            if dataset is not None and selection.sel:
                dataset = dataset.sel(**selection.sel)
            if dataset is not None and dataset.nbytes <= self.IN_MEMORY_BYTES:
                dataset = dataset.load()
            self._opened[key] = dataset
        return self._opened[key]

    def _open(self, group: str) -> xr.Dataset:
        # chunks=None: lazily indexed arrays without dask, so a selection reads only the chunks it needs.
        return xr.open_zarr(str(self.store.path), group=group, consolidated=False, chunks=None)

    def inputs(self, inputs: Mapping) -> dict[str, xr.Dataset | None]:
        return {name: self.load(selection) for name, selection in inputs.items()}
