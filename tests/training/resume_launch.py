"""Run under torchrun: checkpoints under DDP (through `fit`) and FSDP2 (directly).

An interrupted teacher and svd student, resumed, end with the weights of uninterrupted
runs; an FSDP2-sharded model (accelerate shards only on GPUs, torch does on CPUs too)
saved, restored into a fresh sharded copy and trained on matches the original. Prints
one JSON line on rank 0.

    torchrun --nproc_per_node 2 resume_launch.py MODEL DATA OUT [MAX_LENGTH]

benchmarks/gpu_check.py runs it on GPUs under `accelerate launch` with
examples/distributed/fsdp_8gpu.yaml, where accelerate's FSDP engine wraps the teacher and
the student. accelerate never picks that engine on CPUs (a CPU launch is MULTI_CPU);
SVDLORA_TEST_FSDP_ON_CPU=1 (gpu_check.py --device cpu --fsdp-on-cpu) makes it do so, with
gloo, so that the GPU path's FSDP2 wrapping and checkpoints run on a CPU too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from svdlora_cli.distributed import release_process_group
from svdlora_cli.training.config import TrainConfig
from svdlora_cli.training.student import base_plan, svd_factors_for, train_student
from svdlora_cli.training.teacher import train_teacher

DEVICE = os.environ.get("SVDLORA_TEST_DEVICE", "cpu")  # cuda in benchmarks/gpu_check.py
CONFIG = TrainConfig(
    epochs=2, learning_rate=3e-3, batch_size=4, max_length=64, device=DEVICE, save_every=2
)
RESUMED = TrainConfig(**{**CONFIG.to_dict(), "resume": True})


def interrupt_at(step: int):
    def progress(number: int, total: int, loss: float) -> None:
        if number == step:
            raise KeyboardInterrupt

    return progress


def gap(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def fsdp_roundtrip(folder: Path) -> float:
    """Largest weight difference after 3 more steps of the original and its restored copy."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from svdlora_cli.training.accelerator import gathered_state_dict
    from svdlora_cli.training.resume_state import load_checkpoint, save_checkpoint

    device = torch.device("cuda", torch.cuda.current_device()) if DEVICE == "cuda" else "cpu"

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)
        ).to(device)
        model[0].weight.requires_grad_(False)  # frozen, like a LoRA student's base weights
        for layer in (model[0], model[2]):
            fully_shard(layer)
        fully_shard(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.9**s)

    def step(model, optimizer, scheduler, seed: int) -> None:
        gen = torch.Generator().manual_seed(100 * seed + dist.get_rank())
        model(torch.randn(4, 16, generator=gen).to(device)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    original = build()
    for seed in range(3):
        step(*original, seed)
    save_checkpoint(folder, *original, 3, [], 0, 0.0, "fsdp")
    restored = build()
    assert load_checkpoint(folder, *restored, "fsdp") is not None
    for seed in range(3, 6):
        step(*original, seed)
        step(*restored, seed)
    full = StateDictOptions(full_state_dict=True)
    a = get_model_state_dict(original[0], options=full)
    b = get_model_state_dict(restored[0], options=full)
    gap = max((a[k] - b[k]).abs().max().item() for k in a)

    class FsdpAccelerator:  # what the student saves under accelerate's FSDP
        distributed_type = "DistributedType.FSDP"

    saved = gathered_state_dict(FsdpAccelerator(), original[0], trainable_only=True)
    if dist.get_rank() == 0:  # full tensors of the trainable weights, on rank 0 only
        assert sorted(saved) == ["0.bias", "2.bias", "2.weight"], sorted(saved)
        gap = max([gap] + [(saved[k] - a[k].cpu()).abs().max().item() for k in saved])
    else:
        assert not saved
    return gap


def force_fsdp_on_cpu() -> None:
    """Make accelerate choose its FSDP engine on CPU processes, as it does on GPUs.

    accelerate maps a launch to an engine in PartialState._prepare_backend: MULTI_GPU (and
    then FSDP, under an FSDP config) on GPUs, MULTI_CPU on CPUs. Here it is told MULTI_GPU
    over gloo, with the device pinned to the CPU; the process group is made first, since
    accelerate makes none for a CPU Accelerator that it does not see as MULTI_CPU.
    """
    import torch.distributed as dist
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        return "gloo", DistributedType.MULTI_GPU

    PartialState._prepare_backend = prepare_backend
    if not dist.is_initialized():
        dist.init_process_group("gloo")


def main() -> None:
    if os.environ.get("SVDLORA_TEST_FSDP_ON_CPU") == "1":
        force_fsdp_on_cpu()
    model, data, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if len(sys.argv) > 4:
        global CONFIG, RESUMED
        CONFIG = TrainConfig(**{**CONFIG.to_dict(), "max_length": int(sys.argv[4])})
        RESUMED = TrainConfig(**{**RESUMED.to_dict(), "max_length": int(sys.argv[4])})
    train_teacher(model, out / "full", CONFIG, data)
    with contextlib.suppress(KeyboardInterrupt):
        train_teacher(model, out / "cut", CONFIG, data, progress=interrupt_at(5))
    checkpointed = (out / "cut" / "checkpoints" / "teacher" / "state.json").is_file()
    train_teacher(model, out / "cut", RESUMED, data)

    teacher = str(out / "full" / "final_model")
    factors = svd_factors_for(model, 4, cache_from_env(), teacher_model=teacher)
    plan = base_plan(model, 4, None, factors=factors)
    train_student(model, "svd", out / "sfull", CONFIG, plan, factors, data_path=data)
    with contextlib.suppress(KeyboardInterrupt):
        train_student(
            model,
            "svd",
            out / "scut",
            CONFIG,
            plan,
            factors,
            data_path=data,
            progress=interrupt_at(3),
        )
    train_student(model, "svd", out / "scut", RESUMED, plan, factors, data_path=data)
    fsdp_gap = fsdp_roundtrip(out / "fsdp")
    if int(os.environ.get("RANK", "0")) == 0:
        weights = "final_model/model.safetensors"
        adapter = "final_model_svd/adapter_model.safetensors"
        doc = {
            "checkpointed": checkpointed,
            "teacher_gap": gap(out / "full" / weights, out / "cut" / weights),
            "student_gap": gap(out / "sfull" / adapter, out / "scut" / adapter),
            "fsdp_gap": fsdp_gap,
            "world_size": torch.distributed.get_world_size(),
            "engine": str(AcceleratorState().distributed_type).rsplit(".", 1)[-1],
        }
        print(json.dumps(doc), flush=True)
    release_process_group()
    # The result is out. Interpreter teardown of torch's distributed threads aborted a
    # rank once in about 60 launches here, after all work was done; skip it.
    os._exit(0)


def cache_from_env():
    from svdlora_cli.store.cache import ArtifactCache

    return ArtifactCache(Path(os.environ["SVDLORA_TEST_CACHE"]))


if __name__ == "__main__":
    main()
