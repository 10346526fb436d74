"""`svdlora demo`: the whole seed experiment on a real pretrained model, in one command."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import CacheDirOpt, CacheSizeOpt, JsonOpt, OutputDirOpt
from ._output import cache_options, emit, hooks


def demo(
    model: Annotated[
        str,
        typer.Option(
            "--model", help="smollm2-135m (built in), tiny, an HF folder or a cached hub id."
        ),
    ] = "smollm2-135m",
    name: Annotated[
        str, typer.Option("--name", help="Run name: outputs go to ./svdlora-runs/NAME.")
    ] = "demo",
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny model, short runs: a smoke test.")
    ] = False,
    rank: Annotated[int, typer.Option("--rank", "-r", help="SVD and LoRA rank.")] = 16,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="small: random/svd/pissa x 2 learning rates x 2 seeds, 12 steps each (about "
            "17 min on 2 CPU cores); full: every baseline x 3 learning rates x 3 seeds.",
        ),
    ] = "small",
    inits: Annotated[
        str | None, typer.Option("--inits", help="Student arms (default: the protocol's).")
    ] = None,
    learning_rates: Annotated[
        str | None,
        typer.Option("--learning-rates", help="Student learning-rate grid (default: protocol's)."),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Student seeds (default: the protocol's).")
    ] = None,
    teacher_epochs: Annotated[
        int | None, typer.Option("--teacher-epochs", help="Teacher epochs.")
    ] = None,
    student_epochs: Annotated[
        int | None, typer.Option("--student-epochs", help="Student epochs.")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="Tokens per example.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Examples per step.")
    ] = None,
    generate_limit: Annotated[
        int | None, typer.Option("--generate-limit", help="Eval problems decoded for accuracy.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    output_dir: OutputDirOpt = None,
    cache_dir: CacheDirOpt = None,
    cache_size: CacheSizeOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Teacher SFT, dW, SVD, a grid of students, the paired verdict and the layer report."""
    from ..reporting.tables import demo_summary
    from ..training.inits import parse_inits
    from ..workflows import demo as workflow
    from ..workflows.train import parse_learning_rates
    from .train import _seeds

    overrides = {
        "name": name,
        "rank": rank,
        "inits": tuple(parse_inits(inits)) if inits is not None else None,
        "learning_rates": parse_learning_rates(learning_rates)
        if learning_rates is not None
        else None,
        "seeds": tuple(_seeds(seeds)) if seeds is not None else None,
        "device": device,
        "output_dir": output_dir,
        "teacher_epochs": teacher_epochs,
        "student_epochs": student_epochs,
        "max_length": max_length,
        "batch_size": batch_size,
        "generate_limit": generate_limit,
        "cache": cache_options(cache_dir, False, cache_size),
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if quick:
        if name == "demo":
            overrides["name"] = "quick"
        settings = workflow.DemoSettings.quick_settings(**overrides)
    else:
        settings = workflow.DemoSettings.for_protocol(protocol, model=model, **overrides)
    if quick and model != "smollm2-135m":
        settings.model = model
    emit(workflow.run(settings, hooks(announce=True)), json_output, demo_summary)
