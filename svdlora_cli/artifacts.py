"""Write a step's outputs (factors, adapter, JSON, text, plot, run record) to its folder.

Each set is staged and moved into place with the document last (see `output_sets`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .adapters.factors import LowRankFactors, save_factors, write_peft_adapter
from .files import ensure_writable_dir, write_json, write_run_config, write_text
from .output_sets import staged
from .reporting.plots import svd_analysis_png
from .reporting.text import delta_report, svd_report
from .spectra.settings import svd_label

if TYPE_CHECKING:  # the warm `svd` path writes through here without importing torch
    from .spectra.delta import DeltaResult
    from .spectra.svd_step import SvdResult


def _announce(doc: dict[str, Any], paths: dict[str, Path]) -> None:
    """Record the output paths in the document before anything is written."""
    doc["artifacts"] = {name: str(path) for name, path in paths.items()}


def _finish(
    doc: dict[str, Any],
    json_path: Path,
    command: str,
    options: dict[str, Any] | None,
    inputs: dict[str, Any],
) -> dict[str, Any]:
    """run_config.json, then the document itself last: its presence means the rest is there."""
    write_run_config(json_path.parent, command, options or {}, inputs)
    write_json(json_path, doc)
    return doc


def svd_document(
    result: SvdResult, base_model: str, tuned_model: str, split: str
) -> dict[str, Any]:
    """The single record every `svd` renderer reads: JSON, text, plot and table."""
    return {
        "base_model": base_model,
        "tuned_model": tuned_model,
        "split": split,
        **result.to_dict(),
    }


def write_svd_outputs(
    result: SvdResult,
    output_dir: Path,
    base_model: str,
    tuned_model: str,
    split: str = "b",
    options: dict[str, Any] | None = None,
    plot: bool = True,
    verify: Callable[[Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Factors, PEFT adapter, analysis JSON, text report and PNG; returns the document."""
    return write_svd_files(
        svd_document(result, base_model, tuned_model, split),
        output_dir,
        result.factors("b"),
        result.factors(split),
        result.candidates,
        result.fan_in_fan_out,
        options,
        plot,
        verify,
    )


def write_svd_files(
    doc: dict[str, Any],
    output_dir: Path,
    factors: Mapping[str, LowRankFactors],
    adapter_factors: Mapping[str, LowRankFactors],
    candidates: Sequence[str],
    fan_in_fan_out: bool,
    options: dict[str, Any] | None = None,
    plot: bool = True,
    verify: Callable[[Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The `svd` output set of a document and its factors (split b for the factors file,
    the document's split for the adapter), written by the full and the warm path alike.

    `verify` checks the staged adapter before anything reports on it; when it raises,
    nothing is moved into place.
    """
    folder = ensure_writable_dir(output_dir)
    label = svd_label(doc["rank"], doc["energy_target"])
    base_model, tuned_model = doc["base_model"], doc["tuned_model"]
    fingerprints = doc["fingerprints"]
    paths = {
        "factors": folder / f"svd_factors_{label}.safetensors",
        "adapter": folder / f"adapter_{label}",
        "analysis": folder / f"svd_analysis_{label}.json",
        "report": folder / f"svd_report_{label}.txt",
    }
    if plot:
        paths["plot"] = folder / f"svd_analysis_{label}.png"
    paths["run_config"] = folder / "run_config.json"
    _announce(doc, paths)
    metadata = {
        "base_model": base_model,
        "tuned_model": tuned_model,
        "base_fingerprint": fingerprints["base"] or "",
        "tuned_fingerprint": fingerprints["tuned"] or "",
        "truncation": label,
    }
    inputs = {"base_model": base_model, "tuned_model": tuned_model, **fingerprints}
    with staged(folder, paths["analysis"]) as at:
        save_factors(at(paths["factors"]), factors, metadata)
        write_peft_adapter(
            at(paths["adapter"]), adapter_factors, candidates, base_model, fan_in_fan_out
        )
        if verify is not None:
            doc["verification"] = verify(at(paths["adapter"]))
        write_text(at(paths["report"]), svd_report(doc))
        if plot:
            svd_analysis_png(doc, at(paths["plot"]))
        return _finish(doc, at(paths["analysis"]), "svd", options, inputs)


def write_delta_outputs(
    result: DeltaResult,
    output_dir: Path,
    base_model: str,
    tuned_model: str,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """delta_analysis.json and delta_report.txt; returns the document."""
    folder = ensure_writable_dir(output_dir)
    doc = {"base_model": base_model, "tuned_model": tuned_model, **result.to_dict()}
    paths = {
        "analysis": folder / "delta_analysis.json",
        "report": folder / "delta_report.txt",
        "run_config": folder / "run_config.json",
    }
    _announce(doc, paths)
    inputs = {"base_model": base_model, "tuned_model": tuned_model, **result.fingerprints}
    with staged(folder, paths["analysis"]) as at:
        write_text(at(paths["report"]), delta_report(doc))
        return _finish(doc, at(paths["analysis"]), "delta", options, inputs)


def write_compare_outputs(
    doc: dict[str, Any],
    curves: Any,
    output_dir: Path,
    log_y: bool = False,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """comparison_random_vs_svd.png, comparison_report.txt/.md and comparison.json, with
    lr_sensitivity.png for a learning-rate grid and teacher_budget.png for svd@k arms."""
    from .reporting.compare_views import comparison_markdown, comparison_png, comparison_text
    from .reporting.protocol_views import lr_sensitivity_png
    from .reporting.teacher_budget_plot import teacher_budget_png

    folder = ensure_writable_dir(output_dir)
    paths = {
        "plot": folder / "comparison_random_vs_svd.png",
        "report": folder / "comparison_report.txt",
        "markdown": folder / "comparison_report.md",
        "json": folder / "comparison.json",
    }
    if _several_learning_rates(doc):
        paths["lr_sensitivity"] = folder / "lr_sensitivity.png"
    if doc.get("teacher_budget"):
        paths["teacher_budget"] = folder / "teacher_budget.png"
    _announce(doc, paths)
    with staged(folder, paths["json"]) as at:
        comparison_png(curves, doc, at(paths["plot"]), log_y)
        write_text(at(paths["report"]), comparison_text(doc))
        write_text(at(paths["markdown"]), comparison_markdown(doc))
        if "lr_sensitivity" in paths:
            lr_sensitivity_png(doc["protocol"], at(paths["lr_sensitivity"]))
        if "teacher_budget" in paths:
            teacher_budget_png(doc["teacher_budget"], at(paths["teacher_budget"]))
        return _finish(doc, at(paths["json"]), "compare", options, {})


def write_layer_outputs(
    doc: dict[str, Any], output_dir: Path, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """layer_report.json and layer_report_heatmap.png."""
    from .reporting.plots import layer_heatmap_png

    folder = ensure_writable_dir(output_dir)
    paths = {"json": folder / "layer_report.json", "heatmap": folder / "layer_report_heatmap.png"}
    _announce(doc, paths)
    with staged(folder, paths["json"]) as at:
        layer_heatmap_png(doc, at(paths["heatmap"]))
        inputs = doc.get("fingerprints") or {}
        return _finish(doc, at(paths["json"]), "layer-report", options, inputs)


def write_sweep_outputs(
    doc: dict[str, Any], output_dir: Path, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """sweep.json, sweep_energy.png and, with a trained study, rank_study.png."""
    from .reporting.plots import rank_study_png, sweep_png

    folder = ensure_writable_dir(output_dir)
    paths = {"json": folder / "sweep.json", "plot": folder / "sweep_energy.png"}
    if doc.get("study"):
        paths["rank_study"] = folder / "rank_study.png"
    _announce(doc, paths)
    with staged(folder, paths["json"]) as at:
        sweep_png(doc, at(paths["plot"]))
        if doc.get("study"):
            rank_study_png(doc["study"], at(paths["rank_study"]))
        return _finish(doc, at(paths["json"]), "sweep", options, {})


def _several_learning_rates(doc: dict[str, Any]) -> bool:
    grid = (doc.get("protocol") or {}).get("grid", {})
    return any(len(entry["cells"]) > 1 for entry in grid.values())
