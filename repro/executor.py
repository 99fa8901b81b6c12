"""Where a stage's work units run: in this process (the default), or on the workers of a Dask cluster.

A stage hands the executor a list of independent units and one function that computes a unit and writes
it into the store (``Store.write_unit``: its arrays, then its done-marker), with the run's device (``repro.device``,
resolved once where the run starts) and how to prepare the model there. The stage itself, in the
client process, declares its groups (and holds their writer locks), and finishes them once every unit
is back; workers never declare, lock or finish a group. Results do not depend on where a unit ran: every
seed is derived from the unit's name.

* ``Serial``: the units run here, one after another, on the caller's model.
* ``DaskExecutor``: ``--local-workers N`` starts a ``dask.distributed.LocalCluster`` of N worker
  processes (one thread each); ``--scheduler ADDRESS`` joins a running cluster (dask-jobqueue on SLURM,
  ``dask scheduler`` + ``dask worker``). Each worker builds the model once, from the profile's model
  settings, checks that its weights hash to the run's, and prepares it on the run's kind of device (its
  own GPU, or the CPU); units then reuse it. Units that need no model (``model=None``) build none. A
  worker that dies mid-unit leaves that unit unmarked, and the scheduler runs it again on another worker.

With ``--device cuda`` (or ``auto`` on a machine with CUDA) each local worker owns one GPU: dask-cuda's
``LocalCUDACluster`` when it is installed (optional), otherwise one Nanny per GPU with its own
``CUDA_VISIBLE_DEVICES``; a worker's ``cuda`` is then that GPU.

The same choices come from the environment (``RESIDUAL_STREAM_LOCAL_WORKERS``,
``RESIDUAL_STREAM_SCHEDULER``) and from the profile's ``[run]`` table; an option beats the environment,
which beats the profile.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import click
from tqdm import tqdm

from repro.errors import UserError

LOCAL_WORKERS_ENV = "RESIDUAL_STREAM_LOCAL_WORKERS"
SCHEDULER_ENV = "RESIDUAL_STREAM_SCHEDULER"
CONNECT_TIMEOUT = "10s"

Task = Callable[[Any, Any, Any], Any]  # task(model, context, unit) -> a small result
Prepare = Callable[[Any, Any], Any]  # (model, torch.device) -> the model the units use (placed, frozen, copied)


@dataclass(frozen=True)
class Placement:
    """Where units run: ``local_workers`` processes here, or the cluster at ``scheduler``, else in-process."""

    local_workers: int = 0
    scheduler: str = ""
    device: str = "cpu"  # the kind of device the run resolved to: "cpu" or "cuda" (one GPU per local worker)

    @property
    def distributed(self) -> bool:
        return bool(self.scheduler) or self.local_workers > 0


def placement(profile: Mapping, local_workers: int | None = None, scheduler: str | None = None,
              device=None) -> Placement:
    """The run's placement: the options when either is given, else the environment's, else the profile's
    ``[run]`` table (each source is taken whole, so ``--scheduler`` is not mixed with a profile's workers).
    ``device`` is the run's resolved device (a ``torch.device`` or its name); its kind is what workers use."""
    if local_workers is None and scheduler is None:
        workers_text = os.environ.get(LOCAL_WORKERS_ENV, "").strip()
        scheduler = os.environ.get(SCHEDULER_ENV, "").strip() or None
        if workers_text:
            if not workers_text.isdigit():
                raise UserError(f"{LOCAL_WORKERS_ENV}={workers_text!r}: expected a number of worker processes "
                                "(0: in-process)")
            local_workers = int(workers_text)
    if local_workers is None and scheduler is None:
        from repro import settings

        table = settings.as_profile(profile).run  # validated like every table; None in a store's recorded profile
        local_workers, scheduler = (table.local_workers, table.scheduler) if table else (0, "")
    workers, address = int(local_workers or 0), str(scheduler or "")
    if workers < 0:
        raise UserError(f"--local-workers {workers}: expected 0 (in-process) or more")
    if workers and address:
        raise UserError("choose either --local-workers (a cluster on this machine) or --scheduler (a running one)")
    kind = getattr(device, "type", None) or str(device or "cpu").partition(":")[0]
    return Placement(workers, address, kind)


def open_executor(where: Placement) -> "Serial | DaskExecutor":
    """The executor for a placement (close it when the run ends: ``with open_executor(...) as run:``)."""
    if not where.distributed:
        return Serial()
    return DaskExecutor.start(where)


# ---------------------------------------------------------------- in-process


class Serial:
    """Units in this process, in order, on the caller's model."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def check_store(self, store_path, group: str) -> None:
        pass  # this process declared the group: it sees the store

    def map(self, task: Task, units: Sequence, *, context, model, device=None, prepare: Prepare | None = None,
            model_settings: Mapping | None = None, weights_sha256: str = "", desc: str = "units") -> list:
        """``task(model, context, unit)`` for each unit, ``model`` prepared once on ``device``."""
        if not units:
            return []
        prepared = model
        if model is not None and prepare is not None:
            prepared = prepare(model, device)
        elif model is not None and device is not None:
            from repro import device as devices

            prepared = devices.place(model, devices.resolve(device))
        results = []
        for unit in tqdm(units, desc=desc, unit="unit", dynamic_ncols=True):
            results.append(task(prepared, context, unit))
        return results


# ---------------------------------------------------------------- on a Dask cluster


_MODELS: dict[str, Any] = {}  # this worker's models, by model settings and preparation


def worker_model(model_settings: Mapping, weights_sha256: str, prepare: Prepare | None, device_kind: str):
    """The model a worker's units use, built once per worker process (and per preparation and device),
    on this worker's device of the run's kind: its own GPU for ``cuda``, else the CPU."""
    from repro.model import ModelSpec, load_model

    # The network alone decides the model (not how its taps are read: the aliased FZs reuse it).
    key = json.dumps([repr(ModelSpec.from_profile(dict(model_settings))), getattr(prepare, "__qualname__", ""),
                      getattr(prepare, "__module__", ""), device_kind], sort_keys=True, default=str)
    if key not in _MODELS:
        from repro import device as devices

        device = devices.resolve(device_kind)
        model, record = load_model(ModelSpec.from_profile(dict(model_settings)))
        if weights_sha256 and record["weights_sha256"] != weights_sha256:
            raise UserError(f"the worker's weights {model_settings.get('weights')!r} hash to "
                            f"{record['weights_sha256'][:12]}, the run's to {weights_sha256[:12]}: "
                            "workers need the same weights file")
        _MODELS[key] = prepare(model, device) if prepare is not None else devices.place(model, device)
    return _MODELS[key]


def models_built() -> int:
    """How many models this worker process has built (once per model and preparation)."""
    return len(_MODELS)


def _on_worker(task: Task, context, unit, model_settings, weights_sha256, prepare, device_kind):
    import dask

    # A unit reads the store through dask arrays; on a worker, dask would send those reads back to the
    # cluster and wait for a thread the unit itself holds. Read them here, in this thread.
    with dask.config.set(scheduler="synchronous"):
        model = (worker_model(model_settings, weights_sha256, prepare, device_kind)
                 if model_settings is not None else None)
        return task(model, context, unit)


def _sees_store(path: str, group_file: str, version: str) -> str:
    """'' when this worker sees the store as the client does, else what it sees instead."""
    node = Path(path) / group_file
    try:
        attrs = json.loads(node.read_text()).get("attributes", {})
    except (OSError, ValueError) as error:
        return f"cannot read {node}: {type(error).__name__}"
    if version and attrs.get("version") != version:
        return f"{node} is another copy (version {attrs.get('version')}, the client's is {version})"
    return ""


class DaskExecutor:
    """Units as Dask tasks; the client (this process) waits for them with one progress bar."""

    def __init__(self, client, cluster=None):
        self.client, self.cluster = client, cluster

    @classmethod
    def start(cls, where: Placement) -> "DaskExecutor":
        from distributed import Client

        if where.scheduler:
            try:
                client = Client(where.scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise UserError(f"cannot reach the Dask scheduler at {where.scheduler} ({first}); "
                                "start it (`dask scheduler`) or fix --scheduler") from None
            return cls(client)
        cluster = _local_cluster(where)
        client = Client(cluster)
        click.echo(f"{where.local_workers} local Dask workers; dashboard {client.dashboard_link}", err=True)
        return cls(client, cluster)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import logging

        self.client.close()
        if self.cluster is not None:
            # A worker whose torch threads are slow to exit is stopped by its nanny: expected, not news.
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(logging.ERROR)
            try:
                self.cluster.close()
            finally:
                nanny.setLevel(level)

    def check_store(self, store_path, group: str) -> None:
        """Refuse, in one line, a cluster whose workers do not see the group the client just declared."""
        version = json.loads((Path(store_path) / group / "zarr.json").read_text()).get("attributes", {}).get("version")
        seen = self.client.run(_sees_store, str(Path(store_path).resolve()), f"{group}/zarr.json", version or "")
        if not seen:
            raise UserError(f"the Dask cluster at {self.client.scheduler.address} has no workers")
        blind = {worker: problem for worker, problem in seen.items() if problem}
        if blind:
            worker, problem = next(iter(blind.items()))
            raise UserError(f"store {store_path} is not visible from {len(blind)} Dask worker(s) ({worker}: {problem}); "
                            "workers need the store on a file system they share with this machine")

    def map(self, task: Task, units: Sequence, *, context, model, device=None, prepare: Prepare | None = None,
            model_settings: Mapping | None = None, weights_sha256: str = "", desc: str = "units") -> list:
        """``task(model, context, unit)`` for each unit on the workers; each worker builds the model from
        ``model_settings`` once and prepares it on its device of ``device``'s kind (none when ``model`` is
        None: the units need no model)."""
        from distributed import as_completed

        if not units:
            return []
        if model is not None and model_settings is None:
            raise ValueError("a distributed run needs the model settings its workers build the model from")
        settings = dict(model_settings) if model is not None else None
        kind = getattr(device, "type", None) or str(device or "cpu").partition(":")[0]
        # a key of its own (not the content's): a later map with an equal context must not find this one's
        # data released when this map's futures are cancelled
        shared = self.client.scatter(context, broadcast=True, hash=False)
        futures = [self.client.submit(_on_worker, task, shared, unit, settings, weights_sha256, prepare, kind,
                                      pure=False) for unit in units]
        position = {future.key: index for index, future in enumerate(futures)}
        results = [None] * len(futures)
        try:
            with tqdm(total=len(futures), desc=desc, unit="unit", dynamic_ncols=True) as bar:
                for future in as_completed(futures):
                    results[position[future.key]] = future.result()
                    bar.update()
        finally:
            self.client.cancel(futures)
        return results


def _local_cluster(where: Placement):
    """N worker processes of one thread each; one GPU per worker when the run is on CUDA."""
    from distributed import LocalCluster

    if where.device == "cuda":  # one GPU per worker process
        return _gpu_cluster(where.local_workers)
    return LocalCluster(n_workers=where.local_workers, threads_per_worker=1, processes=True)


def _gpu_cluster(workers: int):
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise UserError("--device cuda with --local-workers: no CUDA device is visible")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        LocalCUDACluster = None
    if LocalCUDACluster is not None:
        return LocalCUDACluster(n_workers=min(workers, gpus), threads_per_worker=1)
    from distributed import Nanny, Scheduler, SpecCluster

    specs = {name: {"cls": Nanny, "options": {"nthreads": 1, "env": env}}
             for name, env in gpu_worker_env(workers, gpus, os.environ.get("CUDA_VISIBLE_DEVICES")).items()}
    return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":8787"}})


def gpu_worker_env(workers: int, gpus: int, visible: str | None) -> dict[str, dict[str, str]]:
    """{worker name: its environment}: one GPU each (at most one worker per GPU), taken from this
    process's ``CUDA_VISIBLE_DEVICES`` when it narrows the GPUs, so a worker's ``cuda`` is its own GPU."""
    listed = [item.strip() for item in visible.split(",") if item.strip()] if visible else []
    listed = listed or [str(i) for i in range(gpus)]
    return {f"gpu-{i}": {"CUDA_VISIBLE_DEVICES": listed[i]} for i in range(min(workers, gpus, len(listed)))}
