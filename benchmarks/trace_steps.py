"""Where the time of a few training steps goes: one `svdlora` command under torch.profiler.

    python benchmarks/trace_steps.py --out DIR [--skip 2] [--active 2] -- \\
        train -b MODEL --max-steps 5 --bf16 --device cuda ...

The command (`train` or `train-teacher`, any options) runs in this process as the
console script would. The profiler is stepped by a hook after every optimizer step, so
the window is the steps themselves: the first `--skip` steps (set-up, step-0 row,
warm-up) are left out, the next one warms the profiler up, and `--active` steps are
recorded; the run needs at least skip + 1 + active steps. Written to DIR:

- `trace_summary.json`: the command's exit code; the wall seconds of each recorded step
  (between optimizer steps, so data, forward, backward and the optimizer); how busy the
  device was (the union of its kernel and copy intervals over the window's span: low
  means the host is the bottleneck, so CUDA graphs or torch.compile would pay; high with a
  low MFU means slow kernels); per step, the scalar reads (`aten::_local_scalar_dense`,
  host tensors' included: on a CPU, fused AdamW reads each parameter's step counter),
  synchronizations (`cuda*Synchronize`) and device-to-host copies, the last two being
  what stalls a GPU; and the top operators by self time on the device (CUDA) or the
  host (CPU);
- `trace_ops.txt`: torch's own table of the same operators.

With `--whole` the whole command is recorded instead (e.g. a cold `svd`: how busy the
device is while the job reads, converts and decomposes), as one "step" with its wall time.

Used by `gpu_check.py`'s trace step; on a CPU it runs the same way (no device columns).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # svdlora_cli without an install (the GPU machine has none)

SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
HOST_READ = "aten::_local_scalar_dense"
TOP = 25


def union_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals (overlapping streams count once)."""
    total, reach = 0.0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def summarize(events: Sequence[Any], averages: Sequence[Any], active: int) -> dict[str, Any]:
    """The window's device busy share, per-step sync counts and top operators."""
    from torch.autograd import DeviceType

    spans = [(e.time_range.start, e.time_range.end) for e in events]
    device = [s for e, s in zip(events, spans, strict=True) if e.device_type != DeviceType.CPU]
    span = (max(end for _, end in spans) - min(start for start, _ in spans)) if spans else 0.0
    busy = union_us(device)
    counts = {"host_reads": 0, "syncs": 0, "device_to_host_copies": 0}
    for e in events:
        if e.name == HOST_READ:
            counts["host_reads"] += 1
        elif e.name in SYNC_EVENTS:
            counts["syncs"] += 1
        elif e.device_type != DeviceType.CPU and "DtoH" in e.name:
            counts["device_to_host_copies"] += 1
    on_device = bool(device)
    key = "self_device_time_total" if on_device else "self_cpu_time_total"
    top = sorted(averages, key=lambda a: getattr(a, key), reverse=True)[:TOP]
    return {
        "span_ms": round(span / 1e3, 3),
        "device_busy_ms": round(busy / 1e3, 3),
        "device_busy_share": round(busy / span, 4) if on_device and span > 0 else None,
        "per_step": {name: round(n / active, 2) for name, n in counts.items()},
        "top_by": key,
        "top": [
            {
                "name": a.key,
                "count": a.count,
                "self_cpu_ms": round(a.self_cpu_time_total / 1e3, 3),
                "self_device_ms": round(a.self_device_time_total / 1e3, 3),
            }
            for a in top
        ],
    }


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        sys.exit("usage: trace_steps.py --out DIR [--skip N] [--active N] -- <svdlora command>")
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip", type=int, default=2, help="steps left out before the window")
    parser.add_argument("--active", type=int, default=2, help="steps recorded")
    parser.add_argument(
        "--whole", action="store_true", help="record the whole command (e.g. svd), not steps"
    )
    args = parser.parse_args(argv[:split])
    if args.skip < 0 or args.active < 1:
        parser.error("--skip must be >= 0 and --active >= 1")
    return args, argv[split + 1 :]


def main(argv: list[str] | None = None) -> int:
    args, command = parse_args(argv)
    if not command:
        sys.exit("trace_steps.py: no svdlora command after --")
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule

    from svdlora_cli.cli.app import main as svdlora_main

    args.out.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    found: dict[str, Any] = {}
    stamps: list[float] = []

    def ready(prof: Any) -> None:  # called once the window's last step is recorded
        found["summary"] = summarize(prof.events(), prof.key_averages(), args.active)
        sort = found["summary"]["top_by"]
        found["table"] = prof.key_averages().table(sort_by=sort, row_limit=40)

    window = schedule(wait=args.skip, warmup=1, active=args.active, repeat=1)
    if args.whole:
        args.skip, args.active = 0, 1  # the command is the one step
        prof = profile(activities=activities)
    else:
        prof = profile(activities=activities, schedule=window, on_trace_ready=ready)

    def stepped(*_: Any) -> None:
        stamps.append(time.perf_counter())
        if not args.whole:
            prof.step()

    hook = register_optimizer_step_post_hook(stepped)
    sys.argv = ["svdlora", *command]
    code: object = 0
    begun = time.perf_counter()
    prof.start()
    try:
        svdlora_main()
    except SystemExit as done:
        code = 0 if done.code is None else done.code
    finally:
        hook.remove()
        prof.stop()
    if args.whole:
        ready(prof)
        recorded = [round(time.perf_counter() - begun, 4)]
    else:
        # Profiler step k runs from optimizer step k to k + 1 (step 0 from the start, set-up
        # included): skip steps wait, one warms up, the next `active` are recorded.
        walls = [round(b - a, 4) for a, b in pairwise(stamps)]
        recorded = walls[args.skip : args.skip + args.active]
    summary = {
        "command": command,
        "exit_code": code,
        "optimizer_steps": len(stamps),
        "skip": args.skip,
        "active": args.active,
        "step_seconds": recorded,
        "complete": "summary" in found and len(recorded) == args.active,
        **found.get("summary", {}),
    }
    (args.out / "trace_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if "table" in found:
        (args.out / "trace_ops.txt").write_text(found["table"])
    print(json.dumps(summary, default=str))
    if code != 0:
        return code if isinstance(code, int) else 1
    return 0 if summary["complete"] else 3


if __name__ == "__main__":
    sys.exit(main())
