"""Ray executor: a local 2-CPU Ray cluster gives exactly a single-process run's edges, also when
a worker dies mid-task (retried, counted once); finer tasks reassemble every block."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from trace_helpers import random_saes, write_cells, write_saes

from sccircuits.errors import ConfigError
from sccircuits.trace.plan import prepare_trace
from sccircuits.rundir import RunDir
from sccircuits.trace import Accumulators, trace
from sccircuits.trace.engine import AblationEngine, TracePlan
from sccircuits.trace.ray_executor import (TraceWorker, assemble_block, make_tasks, pack_cells, task_plan,
                                            trace_with_ray, unpack_cells, worker_args)

OPTS = dict(n_cells=8, n_features=3, selection="frequency", checkpoint_every=3, batch_size=4)
COUNTERS = ("n_cells", "clean_forward_passes", "ablation_forward_passes", "ablations", "null_ablations",
            "ablated_sequences", "n_edges", "n_tests")


@pytest.fixture(scope="module")
def inputs(tiny_geneformer, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_inputs")
    return dict(model=tiny_geneformer, data=write_cells(root / "cells.h5ad", n_cells=12),
                saes=write_saes(random_saes([0, 1, 3], 32, 64, 8), root / "saes"))


@pytest.fixture(scope="module")
def local(inputs, tmp_path_factory):
    """A single-process trace (the reference)."""
    out = tmp_path_factory.mktemp("local")
    trace(**inputs, out=out, progress=False, **OPTS)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'sccircuits[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _metrics(run):
    m = RunDir(run, create=False).stage("trace")["metrics"]
    return {k: m.get(k) for k in COUNTERS}


# ---------------------------------------------------------------- pure pieces (no Ray needed)
def test_pack_cells_round_trip(inputs):
    cells = prepare_trace(**inputs, out=".", progress=False, **OPTS).cells
    back = unpack_cells(pack_cells(cells))
    assert len(back) == len(cells)
    for a, b in zip(cells.input_ids + cells.gene_mask, back.input_ids + back.gene_mask):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.cell_index, cells.cell_index)


def test_tasks_cover_every_block_layer_and_feature_once():
    feats = {0: np.arange(5), 2: np.arange(3)}
    whole = make_tasks(feats, 7, 3)
    assert [t.id for t in whole] == ["b00000", "b00001", "b00002"] and whole[2].cells == (6,)
    fine = make_tasks(feats, 7, 3, task_features=2, split_layers=True)
    assert len({t.id for t in fine}) == len(fine) == 3 * (3 + 2)
    for b in range(3):
        got = sorted((s, f) for t in fine if t.block == b for s, sl in t.slots for f in sl)
        assert got == [(0, f) for f in range(5)] + [(2, f) for f in range(3)]


def test_assemble_block_from_feature_parts(inputs):
    """Parts traced separately (one source layer, some features each) fill the full layout."""
    setup = prepare_trace(**inputs, out=".", progress=False, **OPTS)
    sizes = {t: int(setup.saes[t].d_sae) for ts in setup.targets.values() for t in ts}
    full = AblationEngine(setup.adapter, setup.saes, TracePlan(setup.features, setup.targets, True, 0, 4, 8192))
    want = full.run_cells(setup.cells, [0, 1, 2])
    parts = []
    for task in make_tasks(setup.features, 3, 3, task_features=2, split_layers=True):
        plan = task_plan(setup.features, setup.targets, task.slots, full.plan.null_features, null=True, null_seed=0,
                         batch_size=4, encode_chunk=8192)
        eng = AblationEngine(setup.adapter, setup.saes, plan)
        parts.append((task, eng.run_cells(setup.cells, list(task.cells))))
    got = assemble_block(parts, setup.features, setup.targets, sizes, ("real", "null"))
    assert got.layout_key() == want.layout_key() and got.counters["cells"] == 3
    for s in want.active:
        np.testing.assert_array_equal(got.active[s], want.active[s])
    for key, ps in want.pairs.items():
        np.testing.assert_array_equal(got.pairs[key].n, ps.n)
        np.testing.assert_allclose(got.pairs[key].mean, ps.mean, rtol=1e-5, atol=1e-6)  # other batch rows
    for k in ("ablations", "null_ablations", "ablated_sequences"):
        assert got.counters[k] == want.counters[k]


def test_workers_capped_by_cluster_resources():
    from sccircuits.trace.ray_executor import _fitting_workers

    assert _fitting_workers({"CPU": 2.0}, 1, 0) == 2
    assert _fitting_workers({"CPU": 16.0, "GPU": 2.0}, 1, 1) == 2  # one GPU per worker
    with pytest.raises(ConfigError, match="GPU"):
        _fitting_workers({"CPU": 2.0}, 1, 1)  # --device cuda on a cluster without GPUs: refuse, not hang


def _other_thread_count() -> int:
    """A torch thread count that is not the current one (so applying it is visible)."""
    import torch

    return 1 if torch.get_num_threads() != 1 else 2


def test_worker_applies_threads(inputs):
    """--threads reaches the worker (its constructor arguments) and the worker applies it."""
    import torch

    want = _other_thread_count()
    before = torch.get_num_threads()
    setup = prepare_trace(**inputs, out=".", progress=False, threads=want, **OPTS)
    args = worker_args(setup, pack_cells(setup.cells))
    try:
        worker = TraceWorker(*args)
        assert worker.num_threads() == want
        torch.set_num_threads(before)
        worker.run(make_tasks(setup.features, len(setup.cells), OPTS["checkpoint_every"])[0])
        assert torch.get_num_threads() == want  # applied again before each task
    finally:
        torch.set_num_threads(before)
    # without --threads the worker leaves torch's own setting alone
    setup = prepare_trace(**inputs, out=".", progress=False, **OPTS)
    assert TraceWorker(*worker_args(setup, pack_cells(setup.cells))).num_threads() == before


def test_shard_option_is_refused(inputs, tmp_path):
    with pytest.raises(ConfigError, match="shard"):
        trace_with_ray(**inputs, out=tmp_path, shard="0/2", progress=False, **OPTS)


# ---------------------------------------------------------------- on a local Ray cluster
def test_ray_equals_single_process(ray_cluster, inputs, local, tmp_path):
    res = trace_with_ray(**inputs, out=tmp_path, num_workers=2, progress=False, **OPTS)
    want = pd.read_parquet(local / "trace" / "edges.parquet")
    assert len(want) > 0
    pd.testing.assert_frame_equal(res.edges, want, check_exact=True)
    assert _metrics(tmp_path) == _metrics(local)
    a, _ = Accumulators.load(tmp_path / "trace" / "accumulators.npz")
    b, _ = Accumulators.load(local / "trace" / "accumulators.npz")
    for key in b.pairs:
        np.testing.assert_array_equal(a.pairs[key].m2, b.pairs[key].m2)
    assert res.metrics["executor"]["tasks"] == 3 and res.metrics["executor"]["retries"] == 0


def test_worker_killed_mid_task_is_retried_once_counted(ray_cluster, inputs, local, tmp_path):
    marker = tmp_path / "crashed"
    res = trace_with_ray(**inputs, out=tmp_path / "run", num_workers=2, progress=False,
                         _crash_once=("b00001", str(marker)), **OPTS)
    assert marker.read_text() == "b00001"  # the worker really died on its first attempt
    ex = res.metrics["executor"]
    assert ex["retries"] == 1 and ex["workers_replaced"] == 1 and ex["failures"] == ["b00001: ActorDiedError"]
    pd.testing.assert_frame_equal(res.edges, pd.read_parquet(local / "trace" / "edges.parquet"), check_exact=True)
    assert _metrics(tmp_path / "run") == _metrics(local)  # nothing double counted


def test_ray_worker_runs_with_threads(ray_cluster, inputs):
    """A Ray worker of 1 CPU (Ray's own default: 1 thread) runs with --threads 2."""
    ray = ray_cluster
    setup = prepare_trace(**inputs, out=".", progress=False, threads=2, **OPTS)
    actor = ray.remote(num_cpus=1)(TraceWorker).remote(*worker_args(setup, ray.put(pack_cells(setup.cells))))
    try:
        assert ray.get(actor.num_threads.remote()) == 2
    finally:
        ray.kill(actor, no_restart=True)


def test_finer_tasks_give_the_same_edges(ray_cluster, inputs, local, tmp_path):
    res = trace_with_ray(**inputs, out=tmp_path, num_workers=2, task_features=2, split_layers=True,
                         progress=False, **OPTS)
    want = pd.read_parquet(local / "trace" / "edges.parquet")
    keys = ["source_layer", "source_feature", "target_layer", "target_feature"]
    pd.testing.assert_frame_equal(res.edges[keys], want[keys])
    np.testing.assert_allclose(res.edges["cohens_d"], want["cohens_d"], rtol=1e-4)
    assert _metrics(tmp_path)["ablations"] == _metrics(local)["ablations"]
    a, _ = Accumulators.load(tmp_path / "trace" / "accumulators.npz")
    b, _ = Accumulators.load(local / "trace" / "accumulators.npz")
    assert a.counters["cells"] == b.counters["cells"] == 8  # each cell counted once over its tasks
    assert a.counters["clean_forward_passes"] > b.counters["clean_forward_passes"]  # one per task: real work


def test_run_trace_dispatch(inputs, tmp_path):
    from sccircuits.trace.plan import TracePlanReport
    from sccircuits.trace import run_trace

    with pytest.raises(ConfigError, match="executor"):
        run_trace(**inputs, out=tmp_path, executor="dask", progress=False, **OPTS)
    rep = run_trace(**inputs, out=tmp_path, executor="ray", plan=True, num_workers=3, calibrate_cells=0,
                    progress=False, **OPTS)
    assert isinstance(rep, TracePlanReport) and rep.num_workers == 3
    assert not (tmp_path / "trace").exists()  # planning writes nothing
