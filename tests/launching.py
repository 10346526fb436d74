"""Run the CLI (or a script) in one process or under torchrun, as the distributed tests do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from svdlora_cli.distributed import free_port

TORCHRUN = Path(sys.executable).with_name("torchrun")
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")


def launch(
    args: list[str],
    processes: int = 1,
    script: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`svdlora ARGS` (or `python SCRIPT ARGS`) in one process, or under torchrun.

    Every process gets one BLAS thread, torchrun's default: BLAS sums in a thread-dependent
    order, so byte-equal results need the same thread count in both kinds of run.
    """
    program = [str(script)] if script else ["-m", "svdlora_cli"]
    launcher = [sys.executable]
    if processes > 1:
        launcher = [str(TORCHRUN), f"--nproc_per_node={processes}", f"--master_port={free_port()}"]
    return subprocess.run(
        [*launcher, *program, *args],
        env={**os.environ, "SVDLORA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def launch_nodes(args_per_node: list[list[str]]) -> list[tuple[int, str, str]]:
    """One single-process torchrun "node" per argument list, all on this machine at once
    (a multi-node launch whose nodes may be given different options, e.g. caches).
    Returns (exit code, stdout, stderr) per node."""
    env = {**os.environ, "SVDLORA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    port = free_port()  # one rendezvous for all the nodes
    nodes = [
        subprocess.Popen(
            [
                str(TORCHRUN),
                f"--nnodes={len(args_per_node)}",
                f"--node_rank={rank}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "svdlora_cli",
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, args in enumerate(args_per_node)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    return [(node.returncode, out, err) for node, (out, err) in zip(nodes, outputs, strict=True)]
