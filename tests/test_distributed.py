"""Splitting extraction work across processes: the balance, the fallback, and torchrun runs."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from svdlora_cli import devices
from svdlora_cli.distributed import (
    Launch,
    WorkGroup,
    balance,
    split_across_processes,
    work_group,
)
from svdlora_cli.errors import InvalidOptionError
from svdlora_cli.spectra import svd_step as extraction
from svdlora_cli.spectra.svd_step import run_svd
from svdlora_cli.store.cache import ArtifactCache
from tests.launching import TORCHRUN, free_port, launch, launch_nodes, needs_torchrun


def _loads(costs, bins):
    return [sum(costs[i] for i in b) for b in bins]


def test_balance_is_a_partition_close_to_the_best_split():
    costs = [9.0, 7.0, 6.0, 5.0, 5.0, 4.0, 3.0, 2.0, 1.0, 1.0]
    for parts in (1, 2, 3, 4):
        bins = balance(costs, parts)
        assert sorted(itertools.chain(*bins)) == list(range(len(costs)))
        assert all(b == sorted(b) for b in bins)
        best = (
            min(
                max(_loads(costs, [[i for i, p in enumerate(a) if p == j] for j in range(parts)]))
                for a in itertools.product(range(parts), repeat=len(costs))
            )
            if parts <= 3
            else sum(costs) / parts
        )
        assert max(_loads(costs, bins)) <= 4 / 3 * best + 1e-9
    assert balance(costs, 3) == balance(list(costs), 3)  # deterministic
    assert balance([], 2) == [[], []]
    # Cost, not count: one big matrix is a share of its own.
    assert balance([100.0, 1.0, 1.0, 1.0], 2) == [[0], [1, 2, 3]]


def test_launch_reads_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    launch = Launch.from_env()
    assert (launch.rank, launch.world_size, launch.local_rank) == (3, 8, 1)
    assert launch.distributed and not launch.primary
    torch = devices.torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.local_device(torch.device("cuda")).index == 1  # LOCAL_RANK
    assert devices.local_device(torch.device("cuda:0")).index == 0
    assert devices.local_device(torch.device("cpu")).type == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(InvalidOptionError, match="has 2 GPU"):
        devices.local_device(torch.device("cuda"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert Launch.from_env() == Launch()


def test_splitting_is_opt_in_for_library_callers(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with work_group() as group:  # a script calling run_svd on one rank must not wait
        assert not group.active
    with split_across_processes(), work_group(share_through_cache=False) as group:
        assert not group.active  # nothing to share results through
    with split_across_processes(), split_across_processes(False), work_group() as group:
        assert not group.active


def test_single_process_group_does_everything():
    with work_group() as group:
        assert not group.active
        assert group.split(["a", "b"], key=str, cost=len) == (["a", "b"], [])
        group.wait()


class _HalfGroup(WorkGroup):
    """Rank 0 of 2 whose partner never delivers: the other half is missing after `wait`."""

    def __init__(self) -> None:
        super().__init__(Launch(rank=0, world_size=2), active=False)

    def split(self, todo, key, cost):
        todo = list(todo)
        return todo[::2], todo[1::2]


def test_results_missing_after_the_barrier_are_computed_here(llama_pair, tmp_path, monkeypatch):
    reference = run_svd(str(llama_pair.base), str(llama_pair.tuned), ArtifactCache(None), rank=2)

    @contextlib.contextmanager
    def half(share_through_cache=True):
        yield _HalfGroup()

    monkeypatch.setattr(extraction, "work_group", half)
    cache = ArtifactCache(tmp_path / "cache")
    result = run_svd(str(llama_pair.base), str(llama_pair.tuned), cache, rank=2)
    assert any("were not in the cache" in w for w in result.warnings)
    for module, (U, S, _) in reference.truncated.items():
        assert result.truncated[module][1].equal(S)
        assert (result.truncated[module][0] * S).allclose(U * S, atol=1e-6)
    assert result.cache == reference.cache


def _both(args: list[str], tmp_path: Path) -> tuple[Path, Path, dict]:
    """Run one process and two processes, each with its own cache; return both folders."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    runs = {}
    for label in ("single", "multi"):
        full = [*args, "-o", str(tmp_path / label), "--cache-dir", str(tmp_path / f"c-{label}")]
        done = launch(full, 1 if label == "single" else 2)
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(done.stdout.strip().splitlines()) == 1  # one JSON document, from rank 0
        runs[label] = json.loads(done.stdout)
    return tmp_path / "single", tmp_path / "multi", runs


def _computed_by(cache_dir: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for entry in ArtifactCache(cache_dir).entries():
        if entry["kind"] == "svd":
            counts[entry["rank"]] = counts.get(entry["rank"], 0) + 1
    return counts


@needs_torchrun
@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_svd_two_processes_write_the_same_bytes(qwen2_pair, tmp_path, method):
    args = ["svd", "-b", str(qwen2_pair.base), "-t", str(qwen2_pair.tuned), "--rank", "4"]
    args += ["--method", method, "--cache-rank", "8", "--json", "--no-plot"]
    single, multi, docs = _both(args, tmp_path)
    for name in ("adapter_rank4/adapter_model.safetensors", "svd_factors_rank4.safetensors"):
        assert (single / name).read_bytes() == (multi / name).read_bytes(), name
    assert docs["multi"]["modules"] == docs["single"]["modules"]
    assert docs["multi"]["compute"] == {"device": "cpu", "processes": 2, "threads": 1}
    assert docs["single"]["compute"]["processes"] == 1
    assert docs["multi"]["cache"] == docs["single"]["cache"] == {"hits": 0, "misses": 14}
    # Both processes decomposed part of the 14 targets, and each target once.
    assert sorted(_computed_by(tmp_path / "c-multi")) == [0, 1]
    assert sum(_computed_by(tmp_path / "c-multi").values()) == 14
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())


@needs_torchrun
def test_delta_and_layer_report_two_processes_match_one(llama_pair, tmp_path):
    pair = ["-b", str(llama_pair.base), "-t", str(llama_pair.tuned), "--json"]
    _, _, delta = _both(["delta", *pair], tmp_path / "delta")
    assert delta["multi"]["modules"] == delta["single"]["modules"]
    assert delta["multi"]["untargeted"] == delta["single"]["untargeted"]
    _, _, layers = _both(["layer-report", *pair, "--rank", "2", "--intruders"], tmp_path / "layers")
    assert layers["multi"]["modules"] == layers["single"]["modules"]
    assert layers["multi"]["by_layer"] == layers["single"]["by_layer"]


@needs_torchrun
def test_bad_input_under_torchrun_names_the_rank(qwen2_pair, tmp_path):
    args = ["svd", "-b", str(tmp_path / "missing"), "-t", str(qwen2_pair.tuned), "-r", "4"]
    done = launch([*args, "-o", str(tmp_path / "out")], 2)
    assert done.returncode == 1, done.stderr[-3000:]  # torchrun: a worker failed
    assert "Error: model not found" in done.stderr and "Hint:" in done.stderr
    # When rank 0 fails first, torchrun may stop rank 1 before it reports (seen under load
    # in CI); whatever rank 1 does report carries its rank.
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert all(
        line.startswith(("Error: model not found", "Error: [rank 1] model not found"))
        for line in errors
    ), errors
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@needs_torchrun
def test_two_nodes_without_a_shared_cache_still_agree(qwen2_pair, tmp_path):
    """Two one-process "nodes", each with its own cache: after the barrier neither finds
    the other's results, recomputes them with a warning, and the adapter bytes still
    equal a single process's."""
    args = ["svd", "-b", str(qwen2_pair.base), "-t", str(qwen2_pair.tuned), "-r", "4"]
    args += ["--json", "--no-plot"]
    per_node = [
        [*args, "-o", str(tmp_path / f"node{i}"), "--cache-dir", str(tmp_path / f"c{i}")]
        for i in (0, 1)
    ]
    nodes = launch_nodes(per_node)
    assert [rc for rc, _, _ in nodes] == [0, 0], nodes[0][2][-2000:]
    doc = json.loads(nodes[0][1])
    assert any("were not in the cache" in w for w in doc["warnings"])
    assert "[rank 1]" in nodes[1][2] and nodes[1][1] == ""  # rank 1 warns, prints nothing
    single = launch([*args, "-o", str(tmp_path / "single"), "--cache-dir", str(tmp_path / "c")])
    assert single.returncode == 0, single.stderr
    name = "adapter_rank4/adapter_model.safetensors"
    assert (tmp_path / "node0" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()


def _payloads(cache: Path) -> int:
    return len(list((cache / "payloads").glob("*/*.safetensors"))) if cache.exists() else 0


@needs_torchrun
def _children(pid: int) -> list[int]:
    """The processes `pid` started (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _wait_dead(pids: list[int], seconds: float = 30.0) -> None:
    """Until each process is gone or a zombie (a zombie holds no file, so no lock)."""
    deadline = time.monotonic() + seconds
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.01)


def test_killed_launch_resumes_from_the_cache(qwen2_pair, tmp_path):
    """SIGKILL to the whole torchrun launch mid-way; the rerun reuses what both ranks
    stored and writes the same adapter bytes as an uninterrupted single process."""
    slow = Path(__file__).parent / "reliability" / "slow_svd.py"
    svd = ["svd", "-b", str(qwen2_pair.base), "-t", str(qwen2_pair.tuned), "-r", "4", "--json"]
    args = [*svd, "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "SVDLORA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    run = subprocess.Popen(
        [str(TORCHRUN), "--nproc_per_node=2", f"--master_port={free_port()}", str(slow), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # one signal reaches torchrun and both workers
    )
    deadline = time.monotonic() + 120
    while run.poll() is None and _payloads(tmp_path / "cache") < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.poll() is None, "the launch ended before it could be killed"
    workers = _children(run.pid)  # torchrun starts each worker in a session of its own
    os.killpg(run.pid, signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    run.wait()
    _wait_dead(workers)
    stored = _payloads(tmp_path / "cache")
    assert 4 <= stored < 14
    rerun = launch(args, 2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout)["cache"]["hits"] >= stored
    reference = launch([*svd, "-o", str(tmp_path / "ref"), "--cache-dir", str(tmp_path / "c")])
    assert reference.returncode == 0, reference.stderr[-3000:]
    name = "adapter_rank4/adapter_model.safetensors"
    assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
