"""The prepared device check of issue 8: one script, one JSON summary.

    python benchmarks/gpu_check.py --out /tmp/gpu_check            # on a GPU machine
    python benchmarks/gpu_check.py --device cpu --processes 2      # the same steps on CPU

Steps, each timed, with its pass/fail in the summary (the script exits 1 if any fails):

1. environment: torch, CUDA, GPU names;
2. train-teacher on the built-in tiny model: one process against DDP over every GPU
   (`torchrun`), same global batch: identical logged losses, weights within 1e-5;
3. svd of that teacher with --device DEVICE: one process against the torchrun split,
   byte-identical adapters;
4. --save-every / --resume through `fit` under the launch, and the FSDP2 checkpoint round
   trip (tests/training/resume_launch.py), under `accelerate launch` with FSDP on GPUs;
5. extraction speed on a synthetic Qwen2.5-0.5B-shaped pair: --device DEVICE against
   --device cpu, cold, the same command otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from svdlora_cli.distributed import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
DATA = ROOT / "data" / "training_data" / "train_flattened.json"


def sh(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    result = {"rc": done.returncode, "seconds": round(time.perf_counter() - start, 2)}
    if done.returncode != 0:
        result["stderr"] = done.stderr[-2000:]
    result["stdout"] = done.stdout
    return result


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "svdlora_cli", *args]


def launched(processes: int, port: int, *args: str) -> list[str]:
    return [TORCHRUN, f"--nproc_per_node={processes}", f"--master_port={port}", *args]


def max_gap(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def environment() -> dict:
    import torch

    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpus": os.cpu_count(),
    }


def teacher_step(out: Path, device: str, processes: int) -> dict:
    args = ["train-teacher", "-m", "tiny", "--data-path", str(DATA), "--max-steps", "12"]
    args += ["--batch-size", "8", "--max-length", "512", "--learning-rate", "1e-3"]
    args += ["--device", device, "--no-workspace", "--json"]
    one = sh(cli(*args, "-o", str(out / "teacher1")))
    many = sh(
        launched(processes, free_port(), "-m", "svdlora_cli", *args, "-o", str(out / "teacherN"))
    )
    result = {"single": one, "launch": many, "ok": False}
    if one["rc"] == 0 and many["rc"] == 0:
        steps = [json.loads(r["stdout"])["arms"][0]["steps"] for r in (one, many)]
        weights = "final_model/model.safetensors"
        gap = max_gap(out / "teacher1" / weights, out / "teacherN" / weights)
        result.update(same_steps=steps[0] == steps[1], weight_gap=gap, ok=gap < 1e-5)
    return result


def svd_step(out: Path, device: str, processes: int) -> dict:
    args = ["svd", "-b", "tiny", "-t", str(out / "teacher1" / "final_model"), "--rank", "8"]
    args += ["--device", device, "--no-plot", "--json"]
    env = {"OMP_NUM_THREADS": "1"}  # the same BLAS threads per process in both runs
    one = sh(cli(*args, "-o", str(out / "svd1"), "--cache-dir", str(out / "c1")), env)
    outputs = ["-o", str(out / "svdN"), "--cache-dir", str(out / "cN")]
    many = sh(launched(processes, free_port(), "-m", "svdlora_cli", *args, *outputs), env)
    result = {"single": one, "launch": many, "ok": False}
    if one["rc"] == 0 and many["rc"] == 0:
        name = "adapter_rank8/adapter_model.safetensors"
        same = (out / "svd1" / name).read_bytes() == (out / "svdN" / name).read_bytes()
        result.update(adapter_identical=same, ok=same)
    return result


def resume_step(out: Path, device: str, processes: int) -> dict:
    script = str(ROOT / "tests" / "training" / "resume_launch.py")
    env = {
        "SVDLORA_TEST_DEVICE": device,
        "SVDLORA_TEST_CACHE": str(out / "c-resume"),
        "PYTHONPATH": str(ROOT),
    }
    model = str(out / "teacher1" / "final_model")
    if device == "cuda":
        config = out / "fsdp.yaml"
        text = (ROOT / "examples" / "distributed" / "fsdp_8gpu.yaml").read_text()
        config.write_text(text.replace("num_processes: 8", f"num_processes: {processes}"))
        launcher = ["accelerate", "launch", "--config_file", str(config)]
        launcher += ["--main_process_port", str(free_port()), script]
    else:
        launcher = launched(processes, free_port(), script)
    rows = out / "rows16.json"  # a few rows keep the four short runs short
    rows.write_text(json.dumps(json.loads(DATA.read_text())[:16]))
    inputs = [model, str(rows), str(out / "resume"), "512"]
    result = {**sh([*launcher, *inputs], env), "ok": False}
    if result["rc"] == 0:
        doc = json.loads(result["stdout"].strip().splitlines()[-1])
        gaps = [doc["teacher_gap"], doc["student_gap"], doc["fsdp_gap"]]
        result.update(doc, ok=doc["checkpointed"] and max(gaps) < 1e-5)
    return result


def speed_step(out: Path, device: str) -> dict:
    pair = out / "pair05"
    made = sh(
        [sys.executable, str(HERE / "make_pair.py"), "--shape", "qwen2.5-0.5b", "--out", str(pair)]
    )
    if made["rc"] != 0:
        return {"make_pair": made, "ok": False}
    runs = {}
    for dev in dict.fromkeys([device, "cpu"]):
        args = ["svd", "-b", str(pair / "base"), "-t", str(pair / "tuned"), "--rank", "16"]
        args += ["--device", dev, "--no-plot", "--json", "--cache-dir", str(out / f"c-{dev}")]
        runs[dev] = sh(cli(*args, "-o", str(out / f"speed-{dev}")))
    result: dict = {"runs": runs, "ok": all(r["rc"] == 0 for r in runs.values())}
    if result["ok"] and device != "cpu":
        result["cpu_over_device"] = round(runs["cpu"]["seconds"] / runs[device]["seconds"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_check"))
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--processes", type=int, help="default: the number of GPUs")
    parser.add_argument("--skip-speed", action="store_true", help="leave out step 5")
    args = parser.parse_args()
    os.environ["SVDLORA_NO_PROGRESS"] = "1"
    env = environment()
    processes = args.processes or max(1, len(env["gpus"]))
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"environment": env, "device": args.device, "processes": processes}
    summary["teacher"] = teacher_step(args.out, args.device, processes)
    summary["svd"] = svd_step(args.out, args.device, processes)
    summary["resume"] = resume_step(args.out, args.device, processes)
    if not args.skip_speed:
        summary["speed"] = speed_step(args.out, args.device)
    summary["ok"] = all(v["ok"] for v in summary.values() if isinstance(v, dict) and "ok" in v)
    text = json.dumps(summary, indent=2, default=str)
    (args.out / "gpu_check.json").write_text(text)
    print(text)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
