"""`svdlora demo`: the whole seed experiment on a real pretrained model, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import CacheDirOpt, CacheSizeOpt, JsonOpt, OutputDirOpt
from ._output import emit, progress, resolve_cache, stderr, training_progress


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
    inits: Annotated[str, typer.Option("--inits", help="Student arms.")] = "random,svd,subspace",
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
    """Teacher SFT, dW, SVD, random/svd/subspace students, comparison and layer report."""
    from ..demo import DemoSettings, run_demo
    from ..files import check_writable_dir
    from ..reporting.tables import demo_summary
    from ..training.inits import parse_inits

    overrides = {
        "name": name,
        "rank": rank,
        "inits": tuple(parse_inits(inits)),
        "device": device,
        "output_dir": output_dir,
        "teacher_epochs": teacher_epochs,
        "student_epochs": student_epochs,
        "max_length": max_length,
        "batch_size": batch_size,
        "generate_limit": generate_limit,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if quick:
        if name == "demo":
            overrides["name"] = "quick"
        settings = DemoSettings.quick_settings(**overrides)
    else:
        settings = DemoSettings(model=model, **overrides)
    if quick and model != "smollm2-135m":
        settings.model = model
    check_writable_dir(settings.folder)
    cache = resolve_cache(cache_dir, False, cache_size)
    try:
        doc = run_demo(
            settings,
            cache,
            step_bar=training_progress,
            item_bar=progress,
            announce=lambda text: stderr.print(f"[bold cyan]{text}[/]", highlight=False),
        )
    finally:
        cache.close()
    doc["artifacts"]["summary"] = str(_save(doc, Path(doc["run_dir"])))
    emit(doc, json_output, demo_summary)


def _save(doc: dict, folder: Path) -> Path:
    from ..files import write_json

    return write_json(folder / "demo_summary.json", doc)
