"""Distributed tracing on a Ray cluster (``sccircuits trace --executor ray``).

The driver resolves the trace exactly as a local ``sccircuits trace`` (same cells, features
and block fingerprint, :func:`sccircuits.trace.prepare_trace`), then splits the work into
*tasks* = (cell block) x (source-layer group) x (feature block):

* a cell block is one of the tracer's checkpoint blocks (``checkpoint_every`` cells);
* by default a task is a whole block (all source layers, all features): each block is then
  computed by the tracer's own engine on the same cells in the same order, and the result is
  **bit-for-bit** a local run's (the same block files, the same fold, the same edges). Blocks
  of a Ray run and of a local / sharded run of the same trace are interchangeable (resume).
* ``split_layers=True`` / ``task_features=N`` split a block further (one source layer per
  task, N features per task) to spread a few huge blocks or bound a worker's accumulator
  memory (F x T arrays). The driver reassembles each block from its parts. The numbers then
  differ from a local run in float rounding only (the batched forward passes group different
  rows, ~1e-7 relative), edges are identical unless a test sits on a threshold; such runs use
  their own fingerprint so their blocks never mix with a local run's.

Workers are Ray actors; each loads the model and SAEs once from their *paths* (which must be
readable at the same path on every node) and receives the tokenized cells once (numpy arrays
in the object store). Tasks return numpy arrays only (``Accumulators.to_arrays``). The driver
writes each finished block atomically to ``RUN/trace/blocks/`` (so an interrupted Ray run
resumes, locally or on Ray), keyed by task id: a task's result is merged once, whatever
retries happened. A worker that dies (process killed, node lost) is replaced and its task
resubmitted, at most ``max_retries`` times per task; an exception raised by the tracing code
itself is not retried (it would fail again) and is raised on the driver.

Ray is optional: ``pip install 'sccircuits[ray]'``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .accumulators import STAT_NAMES, Accumulators
from .config import TraceConfig
from .engine import TracePlan


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'sccircuits[ray]' (or pip install ray)") from None
    return ray


# ----------------------------------------------------------------------------- cells
def pack_cells(cells) -> dict[str, np.ndarray]:
    """Tokenized cells as flat numpy arrays (what crosses to the workers; no pickled objects)."""
    lengths = cells.lengths()
    out = {"lengths": lengths, "input_ids": np.concatenate(cells.input_ids).astype(np.int64),
           "gene_mask": np.concatenate(cells.gene_mask).astype(bool),
           "cell_index": np.asarray(cells.cell_index, np.int64)}
    if cells.values is not None:
        out["values"] = np.concatenate(cells.values).astype(np.float32)
    return out


def unpack_cells(arrays: dict[str, np.ndarray]):
    """Inverse of :func:`pack_cells`."""
    from ..models.base import TokenizedCells

    cuts = np.cumsum(arrays["lengths"])[:-1]
    split = lambda x: [np.asarray(a) for a in np.split(x, cuts)]  # noqa: E731
    values = split(arrays["values"]) if "values" in arrays else None
    return TokenizedCells(split(arrays["input_ids"]), values, split(arrays["gene_mask"]),
                          np.asarray(arrays["cell_index"], np.int64))


# ----------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """One unit of work: some source features of some source layers on one block of cells."""

    id: str
    block: int
    cells: tuple[int, ...]
    """Positions of the block's cells in the tokenized cells."""
    slots: tuple[tuple[int, tuple[int, ...]], ...]
    """(source layer, slots) pairs: slots index the trace's feature list of that layer."""


def make_tasks(features: dict[int, np.ndarray], n_cells: int, block_size: int,
               task_features: int | None = None, split_layers: bool = False) -> list[Task]:
    """Tasks covering every (block, source layer, feature slot) exactly once, block by block."""
    layers = sorted(features)
    groups = [[s] for s in layers] if split_layers else [layers]
    tasks = []
    for b, start in enumerate(range(0, n_cells, block_size)):
        cells = tuple(range(start, min(start + block_size, n_cells)))
        for group in groups:
            step = task_features or max(len(features[s]) for s in group)
            n_parts = max(-(-len(features[s]) // step) for s in group)
            for p in range(n_parts):
                slots = tuple((s, tuple(range(p * step, min((p + 1) * step, len(features[s])))))
                              for s in group if p * step < len(features[s]))
                tid = f"b{b:05d}" + "".join(f"-s{s}f{sl[0]}_{sl[-1]}" for s, sl in slots) if (split_layers or task_features) \
                    else f"b{b:05d}"
                tasks.append(Task(tid, b, cells, slots))
    return tasks


def assemble_block(parts: list[tuple[Task, Accumulators]], features: dict[int, np.ndarray],
                   targets: dict[int, list[int]], target_sizes: dict[int, int], kinds: tuple[str, ...],
                   null_features: dict[int, np.ndarray] | None = None) -> Accumulators:
    """One block's statistics from its tasks' partial statistics (disjoint features).

    A single part covering everything is returned unchanged. Otherwise each part's slot rows
    are copied into the full layout, and each layer's null draws from the part that ran them
    (the one holding the layer's first feature); work counters are summed (``cells`` counted once).
    """
    whole = {(s, tuple(range(len(f)))) for s, f in features.items()}
    if len(parts) == 1 and set(parts[0][0].slots) == whole:
        return parts[0][1]
    if null_features is None and "null" in kinds:
        null_features = {s: acc.null_features[s] for task, acc in parts for s, slots in task.slots if 0 in slots}
    full = Accumulators.empty(features, targets, target_sizes, kinds, null_features)
    for task, acc in parts:
        for s, slots in task.slots:
            rows = np.asarray(slots, np.int64)
            full.active[s][rows] = acc.active[s]
            for t in targets[s]:
                dst, src = full.pairs[("real", s, t)], acc.pairs[("real", s, t)]
                for name in STAT_NAMES:
                    getattr(dst, name)[rows] = getattr(src, name)
                if "null" in kinds and 0 in slots:
                    full.pairs[("null", s, t)] = acc.pairs[("null", s, t)]
        for k, v in acc.counters.items():
            full.counters[k] = full.counters.get(k, 0) + int(v)
    full.counters["cells"] = len(parts[0][0].cells)
    return full


def task_plan(features: dict[int, np.ndarray], targets: dict[int, list[int]], slots, null_features: dict, **opts) -> TracePlan:
    """The engine plan of a task holding some features (``slots``) of some layers: a layer's null
    draws run in the task holding its first feature, and null directions avoid every traced
    feature of the layer (as in a local run)."""
    feats = {s: features[s][list(sl)] for s, sl in slots}
    nulls = {s: null_features[s] if 0 in sl else np.zeros(0, np.int64) for s, sl in slots}
    return TracePlan(feats, {s: targets[s] for s, _ in slots}, **opts, null_features=nulls,
                     traced={s: features[s] for s, _ in slots})


# ----------------------------------------------------------------------------- worker
class TraceWorker:
    """A Ray actor (see :func:`trace_with_ray`): the model and SAEs loaded once, from paths.
    ``threads``: torch CPU threads of the worker process (``--threads``; None: torch's own)."""

    def __init__(self, model_path: str, saes_path: str, device: str, dtype: str, plan: dict,
                 cells: dict, targets: dict, crash_once: tuple[str, str] | None = None,
                 threads: int | None = None):
        import torch

        from ..models import load_model
        from ..sae import load_saes

        self.threads = threads
        self._set_threads()
        torch.manual_seed(0)
        self.adapter = load_model(model_path, device=device, dtype=dtype)
        self.saes = load_saes(saes_path, device=device)
        self.cells = unpack_cells(cells)
        self.features = {int(s): np.asarray(f, np.int64) for s, f in plan.pop("features").items()}
        self.targets = {int(s): list(t) for s, t in targets.items()}
        self.null_features = TracePlan(self.features, self.targets, **plan).null_features
        plan.pop("null_features", None)
        self.plan_opts = plan
        self.crash_once = crash_once
        self.engines: dict = {}

    def _set_threads(self) -> None:
        """Apply ``threads`` (as the local tracer does around its blocks). The worker process is
        the actor's own; it is applied again before each task, in case a task runs on another
        thread than the constructor (an OpenMP thread count is per calling thread)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def num_threads(self) -> int:
        """torch's CPU threads in this worker (what its tasks run with)."""
        import torch

        return torch.get_num_threads()

    def _engine(self, slots):
        from .engine import AblationEngine

        key = slots
        if key not in self.engines:
            plan = task_plan(self.features, self.targets, slots, self.null_features, **self.plan_opts)
            self.engines = {key: AblationEngine(self.adapter, self.saes, plan)}  # keep one (memory)
        return self.engines[key]

    def run(self, task: Task) -> tuple[str, dict, int]:
        """Trace one task; returns (task id, accumulator arrays, compute milliseconds)."""
        if self.crash_once and task.id == self.crash_once[0] and not os.path.exists(self.crash_once[1]):
            Path(self.crash_once[1]).write_text(task.id)  # test hook: die once, mid-run
            os._exit(1)
        self._set_threads()
        t0 = time.time()
        acc = self._engine(task.slots).run_cells(self.cells, list(task.cells))
        return task.id, acc.to_arrays(), int(round((time.time() - t0) * 1000))

    def ready(self) -> bool:
        return True


def worker_args(setup, cells, crash_once: tuple[str, str] | None = None) -> tuple:
    """The constructor arguments of a :class:`TraceWorker` for a prepared trace (``cells``: the
    packed cells, :func:`pack_cells`, or a Ray reference to them): paths, device, dtype, the
    engine plan's options (a new dict each call: the worker consumes it), targets, the test
    hook and the trace's ``threads``."""
    from .stage import plan_options

    cfg, ins = setup.cfg, setup.inputs
    plan = {"features": {s: f for s, f in setup.features.items()}, **plan_options(cfg),
            "null_features": setup.plan().null_features}
    return (str(ins.model), str(ins.saes), cfg.device, cfg.dtype, plan, cells, setup.targets, crash_once,
            cfg.threads)


# ----------------------------------------------------------------------------- driver
@dataclass(frozen=True)
class RayOptions:
    """How the Ray executor runs (see :func:`trace_with_ray`)."""

    address: str | None = None
    num_workers: int = 2
    cpus_per_worker: float = 1
    gpus_per_worker: float | None = None
    task_features: int | None = None
    split_layers: bool = False
    max_retries: int = 3
    crash_once: tuple[str, str] | None = None
    """Test hook: (task id, marker file): the worker running that task dies once."""

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.max_retries < 0:
            raise ConfigError("num_workers must be >= 1 and max_retries >= 0")
        if self.task_features is not None and self.task_features < 1:
            raise ConfigError("task_features must be >= 1")

    @property
    def split(self) -> bool:
        """Tasks finer than a block (results not bit-identical to a local run)."""
        return bool(self.split_layers or self.task_features)

    def gpus(self, device: str) -> float:
        return self.gpus_per_worker if self.gpus_per_worker is not None else (1 if str(device).startswith("cuda") else 0)


@dataclass
class RayStats:
    """What the executor did (returned in ``TraceResult.metrics['executor']``)."""

    tasks: int = 0
    retries: int = 0
    workers_replaced: int = 0
    duplicates_ignored: int = 0
    blocks_resumed: int = 0
    failures: list[str] = field(default_factory=list)


def trace_with_ray(run=None, *, model=None, data=None, saes=None, annotation=None, out=None,
                   config: TraceConfig | None = None, address: str | None = None, num_workers: int = 2,
                   cpus_per_worker: float = 1, gpus_per_worker: float | None = None,
                   task_features: int | None = None, split_layers: bool = False, max_retries: int = 3,
                   progress: bool = True, _crash_once: tuple[str, str] | None = None, **options):
    """Run :func:`sccircuits.trace.trace` with its blocks computed by Ray workers.

    Same inputs and outputs as ``trace`` (``run`` / ``model``, ``data``, ``saes``,
    ``annotation``, ``out``, ``config`` or options). ``address``: a running Ray cluster
    (``"auto"``, ``"ray://host:10001"``); None starts a local one, or uses the Ray already
    initialised in this process. ``num_workers`` actors, each with ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs (default: 1 when the trace device is CUDA, else 0).
    ``task_features`` / ``split_layers``: finer tasks (see the module docstring; not
    bit-identical to a local run). ``max_retries``: resubmissions of a task whose worker died.
    ``--shard`` is not used (Ray does the splitting); resume from blocks on disk works.
    Returns a :class:`~sccircuits.trace.TraceResult`.
    """
    from tqdm.auto import tqdm

    from . import stage as st

    ray = _import_ray()
    cfg = config if config is not None else TraceConfig(**options)
    if cfg.n_shards != 1:
        raise ConfigError("--shard cannot be combined with --executor ray (Ray splits the work itself)")
    opts = RayOptions(address, num_workers, cpus_per_worker, gpus_per_worker, task_features, split_layers,
                      max_retries, _crash_once)
    t_start = time.time()
    setup = st.prepare_trace(run, model=model, data=data, saes=saes, annotation=annotation, out=out,
                             config=cfg, progress=progress)
    fp = setup.fingerprint if not opts.split else hashlib.sha256(
        f"{setup.fingerprint}|ray-split|{int(split_layers)}|{task_features}".encode()).hexdigest()[:20]
    with st.lock_trace(setup):
        job = st.open_trace(setup, fp, executor={"kind": "ray", "num_workers": num_workers,
                                                 "task_features": task_features, "split_layers": split_layers})
        stats = RayStats(blocks_resumed=len(job.blocks) - len(job.todo))
        if job.finished is None:
            tasks = [t for t in make_tasks(setup.features, len(setup.cells), cfg.checkpoint_every, task_features,
                                           split_layers) if t.block in job.todo]
            stats.tasks = len(tasks)
            if tasks:
                _run_tasks(ray, setup, tasks, opts, fp, job.trace_dir, stats, progress, tqdm)
        result = st.finish_trace(job.rd, [job.trace_dir], job.meta, cfg, t_start, cleanup=True, total=job.finished)
        result.metrics["executor"] = {"kind": "ray", "num_workers": num_workers, **vars(stats)}
        return result


def _fitting_workers(resources: dict, cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` CPUs and ``gpus`` GPUs the cluster holds (at least 1), so
    that no task waits forever for an actor that can never be scheduled."""
    fits = [int(resources.get(name, 0) // need) for name, need in (("CPU", cpus), ("GPU", gpus)) if need > 0]
    if fits and min(fits) == 0:
        raise ConfigError(f"the Ray cluster ({resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU) cannot "
                          f"hold one worker of {cpus:g} CPU and {gpus:g} GPU (use --device cpu without GPUs)")
    return min(fits) if fits else 1_000_000


def _run_tasks(ray, setup, tasks: list[Task], opts: RayOptions, fp: str, trace_dir: Path, stats: RayStats,
               progress: bool, tqdm) -> None:
    """Schedule ``tasks`` on ``opts.num_workers`` actors; write each finished block once."""
    from . import stage as st

    cfg = setup.cfg
    num_workers, cpus_per_worker, max_retries = opts.num_workers, opts.cpus_per_worker, opts.max_retries
    started = False
    if not ray.is_initialized():
        kw = {"address": opts.address} if opts.address else {"include_dashboard": False}
        ray.init(logging_level=logging.WARNING, **kw)
        started = True
    try:
        gpus = opts.gpus(cfg.device)
        Actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus, max_restarts=0)(TraceWorker)
        cells_ref = ray.put(pack_cells(setup.cells))
        new_actor = lambda: Actor.remote(*worker_args(setup, cells_ref, opts.crash_once))  # noqa: E731
        n_actors = min(num_workers, len(tasks), _fitting_workers(ray.cluster_resources(), cpus_per_worker, gpus))
        if n_actors < min(num_workers, len(tasks)):
            warnings.warn(f"the Ray cluster has room for {n_actors} worker(s) of {cpus_per_worker} CPU and {gpus} GPU; "
                          f"using {n_actors} instead of {num_workers}", stacklevel=3)
        actors = [new_actor() for _ in range(n_actors)]
        queue = deque(tasks)
        idle = deque(range(len(actors)))
        pending: dict = {}  # ObjectRef -> (task, actor slot)
        attempts: dict[str, int] = {}
        results: dict[str, tuple[Task, Accumulators]] = {}
        parts_of = {}
        for t in tasks:
            parts_of.setdefault(t.block, []).append(t.id)
        target_sizes = {t: int(setup.saes[t].d_sae) for ts in setup.targets.values() for t in ts}
        with tqdm(total=sum(len(t.cells) for t in tasks if t.id == parts_of[t.block][0]), unit="cell",
                  desc=f"trace cells (ray, {len(actors)} workers)", disable=not progress) as bar:
            while queue or pending:
                while queue and idle:
                    slot, task = idle.popleft(), queue.popleft()
                    pending[actors[slot].run.remote(task)] = (task, slot)
                ready, _ = ray.wait(list(pending), num_returns=1)
                task, slot = pending.pop(ready[0])
                try:
                    tid, arrays, ms = ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:  # the tracing code raised: do not retry
                    raise e.as_instanceof_cause() from None
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as e:
                    attempts[task.id] = attempts.get(task.id, 0) + 1
                    stats.failures.append(f"{task.id}: {type(e).__name__}")
                    if attempts[task.id] > max_retries:
                        raise RuntimeError(f"trace task {task.id} failed {attempts[task.id]} times "
                                           f"(last: {type(e).__name__}: {e})") from None
                    stats.retries += 1
                    stats.workers_replaced += 1
                    ray.kill(actors[slot], no_restart=True)
                    actors[slot] = new_actor()
                    queue.appendleft(task)
                    idle.append(slot)
                    bar.set_postfix(retries=stats.retries)
                    continue
                idle.append(slot)
                if tid in results:  # a task's result is merged once, keyed by its id
                    stats.duplicates_ignored += 1
                    continue
                acc = Accumulators.from_arrays(arrays)
                acc.counters["compute_ms"] = acc.counters.get("compute_ms", 0) + ms
                results[tid] = (task, acc)
                ids = parts_of[task.block]
                if all(i in results for i in ids):
                    block = assemble_block([results.pop(i) for i in ids], setup.features, setup.targets,
                                           target_sizes, setup.kinds(), setup.plan().null_features)
                    path = st.block_path(trace_dir, task.block)
                    if not path.is_file():
                        block.save(path, fingerprint=np.asarray(fp), block=np.asarray(task.block))
                    for i in ids:
                        results[i] = None  # remember the id (duplicates), drop the arrays
                    bar.update(len(task.cells))
        for a in actors:
            ray.kill(a, no_restart=True)
    finally:
        if started:
            ray.shutdown()
