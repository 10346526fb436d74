r"""Time `svdlora svd` against the naive seed-style extraction, side by side in one run.

    python benchmarks/bench_extract.py --pair /tmp/pairs/q05 --rank 16 --repeats 3

Each repeat runs the naive baseline and svdlora as separate processes, in
alternating order, under /usr/bin/time for wall time and peak RSS. svdlora runs
cold (a fresh cache each repeat), then warm at a smaller rank on the same
cache (cut from the cold run's cached spectra, its verdict carried from the cold
adapter's PEFT check where it may be: `warm_verdict` says which), then that warm
command again (its adapter verdict is cached: the warm path).
On a GPU machine, `--device cuda --also-cpu` adds svdlora on the same machine's CPU
in the same repeats, and mergekit runs with the same --device. Accuracy: svdlora's
per-module energy against the exact SVD's, the relative error of the top-r singular
values, and the certificate's worst bound on the energy a randomized module misses.

Optional third column: mergekit's `mergekit-extract-lora` (tried with mergekit
0.1.5 in its own virtualenv, /work/mergekit-venv), timed the same way in the
same repeats, on the same pair and rank, restricted to the same seven targets
(`-i` regex; `-e embed_tokens -e lm_head`, or it saves them at full rank):

    mergekit-extract-lora --model TUNED --base-model BASE --out-path OUT \
        --max-rank R --device cpu --no-copy-tokenizer --quiet \
        -i '\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$' \
        -e embed_tokens -e lm_head

It has no spectrum output, so its energy comes from its adapter: per module,
P = (lora_alpha / r) * B @ A (B is out x r, A is r x in; mergekit writes
lora_alpha = r, so the scale is 1, and its factors in the checkpoint dtype,
bf16 here), dW = tuned - base in fp32 as the naive baseline forms it, and

    energy = 1 - ||dW - P||_F^2 / ||dW||_F^2

which for an exact rank-r truncated SVD equals sum_{i<=r} s_i^2 / ||dW||_F^2,
the figure svdlora reports and naive_extract.py computes. Its top-r singular
values are those of P. These go through the same `accuracy` as svdlora's
(`mergekit_*` keys). svdlora's own adapter gets the same adapter-side check
(`svdlora_adapter_*`), so both adapters are scored by one formula.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_REGEX = r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
MERGEKIT_VENV_EXE = Path("/work/mergekit-venv/bin/mergekit-extract-lora")


def timed(cmd: list[str], label: str) -> dict:
    """Wall seconds and peak RSS (MB) of one child process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", stats.name, *cmd], capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
        _, rss_kb = stats.read().split()[-2:]
    return {"wall_s": round(wall, 2), "rss_mb": round(int(rss_kb) / 1024, 1), "stdout": proc.stdout}


def verdict_origin(stdout: str) -> str:
    """`carried`, `cached` or `checked`: where a `svd --json` run's adapter verdict came from."""
    verdict = json.loads(stdout)["verification"]
    if verdict.get("cached"):
        return "cached"
    return "carried" if verdict.get("carried_from") else "checked"


def svdlora(pair: Path, rank: int, cache: Path, out: Path, device: str, method: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "svdlora_cli",
        "svd",
        "-b",
        str(pair / "base"),
        "-t",
        str(pair / "tuned"),
        "--rank",
        str(rank),
        "--method",
        method,
        "--device",
        device,
        "--no-plot",
        "--json",
        "--cache-dir",
        str(cache),
        "-o",
        str(out),
    ]


def find_mergekit(given: str | None) -> str | None:
    """The mergekit-extract-lora executable: --mergekit, else PATH, else the side venv."""
    if given:
        return given if Path(given).is_file() or shutil.which(given) else None
    found = shutil.which("mergekit-extract-lora")
    if found:
        return found
    return str(MERGEKIT_VENV_EXE) if MERGEKIT_VENV_EXE.is_file() else None


def mergekit(exe: str, pair: Path, rank: int, out: Path, device: str) -> list[str]:
    return [
        exe,
        "--model",
        str(pair / "tuned"),
        "--base-model",
        str(pair / "base"),
        "--out-path",
        str(out),
        "--max-rank",
        str(rank),
        "--device",
        device,
        "--no-copy-tokenizer",
        "--quiet",
        "-i",
        TARGET_REGEX,
        "-e",
        "embed_tokens",
        "-e",
        "lm_head",
    ]


def weight_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of an HF checkpoint folder (sharded or not)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        mapping = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in mapping.items()}
    from safetensors import safe_open

    single = folder / "model.safetensors"
    with safe_open(str(single), "pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def adapter_energy(pair: Path, adapters: dict[str, Path]) -> dict[str, dict]:
    """Score PEFT LoRA adapters against dW: per module energy = 1 - ||dW - s B A||^2 / ||dW||^2.

    s = lora_alpha / r (/ sqrt(r) with rslora; rank_pattern / alpha_pattern
    honoured). Returns {label: {"modules": [{name, energy, rel_error,
    singular_values}]}}, the shape `accuracy` reads.
    """
    import torch
    from safetensors import safe_open

    base_files, tuned_files = weight_map(pair / "base"), weight_map(pair / "tuned")
    loaded = {}
    for label, folder in adapters.items():
        config = json.loads((folder / "adapter_config.json").read_text())
        handle = safe_open(str(folder / "adapter_model.safetensors"), "pt")
        loaded[label] = (config, handle, set(handle.keys()))

    def scale(config: dict, module: str) -> float:
        def pick(pattern: dict, default: float) -> float:
            for key, value in (pattern or {}).items():
                if module == key or module.endswith("." + key):
                    return value
            return default

        r = pick(config.get("rank_pattern"), config["r"])
        alpha = pick(config.get("alpha_pattern"), config["lora_alpha"])
        return alpha / (r**0.5 if config.get("use_rslora") else r)

    def tensor(files: dict[str, Path], name: str) -> torch.Tensor:
        with safe_open(str(files[name]), "pt") as handle:
            return handle.get_tensor(name).to(torch.float32)

    modules = sorted(
        {
            key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            for _, _, keys in loaded.values()
            for key in keys
            if key.endswith(".lora_A.weight")
        }
    )
    reports: dict[str, dict] = {label: {"modules": []} for label in adapters}
    with torch.no_grad():
        for module in modules:
            dw = tensor(tuned_files, module + ".weight") - tensor(base_files, module + ".weight")
            total = float((dw.double() ** 2).sum())
            for label, (config, handle, keys) in loaded.items():
                key = f"base_model.model.{module}.lora_"
                if key + "A.weight" not in keys:
                    continue
                a = handle.get_tensor(key + "A.weight").to(torch.float32)  # r x in
                b = handle.get_tensor(key + "B.weight").to(torch.float32)  # out x r
                if config.get("fan_in_fan_out"):
                    a, b = b.T, a.T
                s = scale(config, module)
                residual = float(((dw - s * (b @ a)).double() ** 2).sum())
                # singular values of s B A from the r x r core: B = Qb Rb, A^T = Qa Ra
                core = s * torch.linalg.qr(b).R @ torch.linalg.qr(a.T).R.T
                reports[label]["modules"].append(
                    {
                        "name": module,
                        "energy": 1 - residual / total if total else 1.0,
                        "rel_error": (residual / total) ** 0.5 if total else 0.0,
                        "singular_values": torch.linalg.svdvals(core).tolist(),
                    }
                )
    return reports


def accuracy(ours: dict, exact: dict, rank: int) -> dict:
    energy_pp, top_rel = [], []
    for module in ours["modules"]:
        ref = exact[module["name"]]
        energy_pp.append(abs(module["energy"] - ref["energy"]) * 100)
        for mine, theirs in zip(module["singular_values"][:rank], ref["top"], strict=False):
            top_rel.append(abs(mine - theirs) / theirs if theirs else 0.0)
    return {
        "max_energy_diff_pp": max(energy_pp),
        "mean_energy_diff_pp": statistics.fmean(energy_pp),
        "max_top_r_sv_rel_error": max(top_rel),
    }


def fingerprint_repeat(pair: Path, cache: Path) -> float:
    """Seconds for a second look at an already fingerprinted pair (memo hit)."""
    code = (
        "import time,sys; from svdlora_cli.store.cache import ArtifactCache; "
        "from svdlora_cli.models.checkpoints import open_pair; c=ArtifactCache(sys.argv[3]); "
        "t=time.perf_counter(); open_pair(sys.argv[1], sys.argv[2], c.memo); "
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(pair / "base"), str(pair / "tuned"), str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=Path, required=True)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--warm-rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="svdlora's and mergekit's device")
    parser.add_argument(
        "--also-cpu",
        action="store_true",
        help="with --device cuda: time svdlora on the same machine's CPU too, in the same "
        "repeats (the GPU-over-CPU ratio)",
    )
    parser.add_argument("--method", default="auto")
    parser.add_argument("--no-naive", action="store_true", help="skip the baseline (it cannot fit)")
    parser.add_argument(
        "--mergekit",
        metavar="PATH",
        help="mergekit-extract-lora executable (default: on PATH, else "
        f"{MERGEKIT_VENV_EXE}); the column is skipped when none is found",
    )
    parser.add_argument("--no-mergekit", action="store_true", help="skip the mergekit column")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="svdlora-bench-"))
    naive, cold, warm, again, merged, on_cpu = [], [], [], [], [], []
    exact, ours = None, None
    mergekit_exe = None if args.no_mergekit else find_mergekit(args.mergekit)
    if not args.no_mergekit and mergekit_exe is None:
        where = args.mergekit or f"PATH or {MERGEKIT_VENV_EXE}"
        print(f"note: mergekit-extract-lora not found ({where}); skipping that column")
    naive_cmd = [
        sys.executable,
        str(HERE / "naive_extract.py"),
        str(args.pair / "base"),
        str(args.pair / "tuned"),
        "--rank",
        str(args.rank),
        "--out",
        str(work / "naive.json"),
    ]
    runs = {"ours": cold, "naive": naive, "mergekit": merged, "ours_cpu": on_cpu}
    for repeat in range(args.repeats):
        cache = work / f"cache{repeat}"
        commands = {
            "ours": svdlora(args.pair, args.rank, cache, work / "out", args.device, args.method),
            "naive": naive_cmd,
        }
        if mergekit_exe:
            out = work / f"mergekit{repeat}"
            commands["mergekit"] = mergekit(mergekit_exe, args.pair, args.rank, out, args.device)
        if args.also_cpu and args.device != "cpu":
            commands["ours_cpu"] = svdlora(
                args.pair, args.rank, work / f"cpucache{repeat}", work / "cpu", "cpu", args.method
            )
        order = ["ours", "naive", "mergekit", "ours_cpu"]
        order = order if repeat % 2 == 0 else order[::-1]
        for name in order:
            if (name == "naive" and args.no_naive) or name not in commands:
                continue
            result = timed(commands[name], name)
            runs[name].append(result)
            print(
                f"repeat {repeat + 1} {name}: {result['wall_s']} s, {result['rss_mb']} MB",
                flush=True,
            )
        ours = json.loads(cold[-1]["stdout"])
        warm_cmd = svdlora(
            args.pair, args.warm_rank, cache, work / "warm", args.device, args.method
        )
        warm.append(timed(warm_cmd, "svdlora warm"))
        # the same command again: its adapter verdict is cached too (the warm path)
        again.append(timed(warm_cmd, "svdlora warm again"))
        print(
            f"repeat {repeat + 1} warm rank {args.warm_rank}: {warm[-1]['wall_s']} s, "
            f"again {again[-1]['wall_s']} s",
            flush=True,
        )
    if not args.no_naive:
        exact = json.loads((work / "naive.json").read_text())

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    figures = {
        "pair": str(args.pair),
        "rank": args.rank,
        "repeats": args.repeats,
        "device": args.device,
        "method": args.method,
        "svdlora_cold_s": median(cold, "wall_s"),
        "svdlora_cold_rss_mb": median(cold, "rss_mb"),
        "svdlora_warm_s": median(warm, "wall_s"),
        "warm_rank": args.warm_rank,
        "cold_over_warm": round(median(cold, "wall_s") / median(warm, "wall_s"), 2),
        # how the first warm run's adapter was vouched for: carried (a cut of the cold run's
        # spectra, no torch) or checked (the full path through PEFT)
        "warm_verdict": sorted({verdict_origin(w["stdout"]) for w in warm}),
        "svdlora_warm_again_s": median(again, "wall_s"),
        "svdlora_warm_again_rss_mb": median(again, "rss_mb"),
        "cold_over_warm_again": round(median(cold, "wall_s") / median(again, "wall_s"), 2),
        "fingerprint_repeat_s": round(fingerprint_repeat(args.pair, work / "cache0"), 3),
        "modules": len(ours["modules"]) if ours else None,
        "svdlora_mean_energy": statistics.fmean(m["energy"] for m in ours["modules"]),
        # the certificate: worst bound on the top-k energy a randomized module misses
        "svdlora_worst_gap_bound": ours["summary"]["worst_energy_gap"],
        "svdlora_max_power_iterations": ours["summary"]["max_power_iterations"],
    }
    if on_cpu:
        figures.update(
            svdlora_cpu_cold_s=median(on_cpu, "wall_s"),
            svdlora_cpu_cold_rss_mb=median(on_cpu, "rss_mb"),
            device_over_cpu=round(median(on_cpu, "wall_s") / median(cold, "wall_s"), 2),
        )
    if naive:
        figures.update(
            naive_s=median(naive, "wall_s"),
            naive_rss_mb=median(naive, "rss_mb"),
            speedup=round(median(naive, "wall_s") / median(cold, "wall_s"), 2),
            rss_ratio=round(median(naive, "rss_mb") / median(cold, "rss_mb"), 2),
            **accuracy(ours, exact, args.rank),
        )
    if merged:
        adapters = {
            "svdlora": Path(ours["artifacts"]["adapter"]),
            "mergekit": work / f"mergekit{args.repeats - 1}",
        }
        scored = adapter_energy(args.pair, adapters)
        figures.update(
            mergekit_exe=mergekit_exe,
            mergekit_s=median(merged, "wall_s"),
            mergekit_rss_mb=median(merged, "rss_mb"),
            # > 1: svdlora is faster / leaner than mergekit
            speedup_vs_mergekit=round(median(merged, "wall_s") / median(cold, "wall_s"), 2),
            rss_ratio_vs_mergekit=round(median(merged, "rss_mb") / median(cold, "rss_mb"), 2),
        )
        for label, report in scored.items():
            energies = [m["energy"] for m in report["modules"]]
            figures[f"{label}_adapter_modules"] = len(energies)
            figures[f"{label}_adapter_mean_energy"] = statistics.fmean(energies)
            figures[f"{label}_adapter_max_rel_error"] = max(
                m["rel_error"] for m in report["modules"]
            )
        if exact is not None:
            theirs = accuracy(scored["mergekit"], exact, args.rank)
            figures.update({f"mergekit_{k}": v for k, v in theirs.items()})
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
