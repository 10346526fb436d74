"""One name per concept: the options are generated from the options records, each old name
parses to the same value as the new one, and --help shows only the new vocabulary."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from svdlora_cli.cli._groups import hidden_aliases, options_from
from svdlora_cli.cli.app import app
from svdlora_cli.workflows import (
    compare,
    delta,
    demo,
    init,
    layer_report,
    svd,
    sweep,
    train,
    train_teacher,
    verify,
)
from svdlora_cli.workflows.common import CacheOptions
from svdlora_cli.workflows.flags import FLAG, form, nested, option
from svdlora_cli.workflows.vocabulary import BASE_MODEL, TRAINING

# command -> (workflow module, options record)
RECORDS = {
    "init": (init, init.InitOptions),
    "train-teacher": (train_teacher, train_teacher.TeacherOptions),
    "delta": (delta, delta.DeltaOptions),
    "svd": (svd, svd.SvdOptions),
    "verify": (verify, verify.VerifyOptions),
    "train": (train, train.TrainOptions),
    "compare": (compare, compare.CompareOptions),
    "layer-report": (layer_report, layer_report.LayerReportOptions),
    "sweep": (sweep, sweep.SweepOptions),
    "demo": (demo, demo.DemoSettings),
}
# The issue's renames: command -> {old name: new name}. The old names stay, hidden.
RENAMES = {
    "svd": {"--seed": "--sketch-seed", "--verify": "--probe"},
    "verify": {"--max-rows": "--eval-limit"},
    "compare": {"--eval-limit": "--generate-limit"},
    "train": {"--target-modules": "--include"},
    "demo": {"--model": "--base-model", "--inits": "--init"},
}
# Spellings that no --help shows any more (the seed's names included).
RETIRED = {
    "--max-rows",
    "--target-modules",
    "--inits",
    "--model",
    "--verify",
    "--model-name",
    "--data-path",
    "--lora-rank",
    "--tuned",
    "--base",
}
# A value each option can parse, by option name (else by its type).
SAMPLES = {
    "init": "random,svd",
    "seeds": "1,2",
    "learning_rates": "1e-3,3e-3",
    "ranks": "4,8",
    "lr_scheduler": "cosine",
}


def _click(name: str):
    return typer.main.get_command(app).commands[name]


def _help(*args: str, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # long names are not cut
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.stdout


def _visible(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


@pytest.fixture
def captured(monkeypatch):
    """Run a command without its work: the options record each workflow would get."""
    seen: list = []

    def capture(options, *_args, **_kwargs):
        seen.append(options)
        return None  # emit prints nothing for None

    for module, _ in RECORDS.values():
        monkeypatch.setattr(module, "run", capture)
    return seen


# What each command needs to build its record at all (a model pair, an adapter).
NEEDS = {
    "init": ["-b", "B"],
    "train": ["-b", "B"],
    "train-teacher": ["-b", "B"],
    "delta": ["-b", "B", "-t", "T"],
    "svd": ["-b", "B", "-t", "T"],
    "layer-report": ["-b", "B", "-t", "T"],
    "sweep": ["-b", "B", "-t", "T"],
    "verify": ["adapter_dir"],
}


def _options(seen, command: str, *args: str, given: str = ""):
    """The options record `svdlora COMMAND ARGS` builds; `given` (base_model or
    teacher_model) is left out of what the command needs, since ARGS set it."""
    needs = list(NEEDS.get(command, []))
    for name, short in (("base_model", "-b"), ("teacher_model", "-t")):
        if given == name and short in needs:
            at = needs.index(short)
            del needs[at : at + 2]
    result = CliRunner().invoke(app, [command, *needs, *args])
    assert result.exit_code == 0, (command, args, result.output, result.exception)
    return seen.pop()


def _sample(entry) -> list[str]:
    """Command-line words giving `entry` a value other than its default."""
    if entry.name in SAMPLES:
        return [SAMPLES[entry.name]]
    kind = entry.type
    text = str(kind)
    if kind is bool or text.startswith("bool"):
        return []
    if "int" in text:
        return ["7"]
    if "float" in text:
        return ["0.25"]
    return ["q_proj" if "list" in text else "value"]


CASES = [
    (command, entry, name, decls)
    for command, (_, record) in RECORDS.items()
    for entry in form(record).entries()
    for name, decls in hidden_aliases(entry.flag)
]


@pytest.mark.parametrize(
    ("command", "entry", "name", "decls"),
    CASES,
    ids=[f"{c} {d[0].split('/')[0]}" for c, _, _, d in CASES],
)
def test_every_old_name_parses_to_the_same_value(captured, command, entry, name, decls):
    new, forms = entry.flag_name, [d.split("/")[0] for d in decls]
    value = _sample(entry)
    if entry.flag.switch:  # both halves of a switch: --x and --no-x
        pairs = [([f"--no-{new[2:]}"], [f"--no-{f[2:]}"]) for f in forms if f.startswith("--")]
        pairs += [([new], [f]) for f in forms]
    else:
        pairs = [([new, *value], [f, *value]) for f in forms]
    for new_words, old_words in pairs:
        by_new = _options(captured, command, *new_words, given=entry.name)
        by_old = _options(captured, command, *old_words, given=entry.name)
        assert by_old == by_new, (old_words, new_words)
        if entry.name not in ("base_model", "teacher_model"):  # else the record needs them
            assert by_new != _options(captured, command), f"{new_words} changed nothing"


@pytest.mark.parametrize("command", sorted(RENAMES))
def test_the_issues_renames_are_made(command):
    params = {p.name: p for p in _click(command).params}
    for old, new in RENAMES[command].items():
        canonical = next(p for p in params.values() if new in p.opts)
        alias = next(p for p in params.values() if old in p.opts)
        assert not canonical.hidden and alias.hidden and alias is not canonical


def test_an_old_name_and_its_new_name_together_are_refused(captured):
    args = ["svd", "-b", "B", "-t", "T", "--seed", "1", "--sketch-seed", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "--sketch-seed only" in result.stderr
    assert not captured


@pytest.mark.parametrize("command", sorted(RECORDS))
def test_help_shows_new_names_only(command, monkeypatch):
    text = _help(command, monkeypatch=monkeypatch)
    hidden = {
        f
        for p in _click(command).params
        if p.hidden
        for f in (*p.opts, *p.secondary_opts)
        if f.startswith("--")
    }
    for flag in hidden | RETIRED:
        assert not _visible(text, flag), (command, flag)
    for p in _click(command).params:
        if p.hidden:
            assert p.name not in {e.name for e in form(RECORDS[command][1]).entries()}


def test_a_shared_option_is_declared_once():
    """An option several commands take is one vocabulary flag: only its help (the default
    it names) and its old names may differ by command."""
    by_name: dict[str, set] = {}
    for _, record in RECORDS.values():
        for entry in form(record).entries():
            plain = dataclasses.replace(
                entry.flag, help="", aliases=(), cli_default=None, panel=None
            )
            by_name.setdefault(entry.flag_name, set()).add(plain)
    shared = {name: flags for name, flags in by_name.items() if len(flags) > 1}
    assert not shared, shared
    assert {"--base-model", "--rank", "--include", "--eval-limit"} <= set(by_name)


@pytest.mark.parametrize("command", sorted(RECORDS))
def test_every_field_with_a_flag_is_an_option_of_its_command(command):
    params = {p.name: p for p in _click(command).params}
    for entry in form(RECORDS[command][1]).entries():
        param = params[entry.name]
        if not entry.flag.argument:
            assert entry.flag_name in param.opts, (command, entry.name)
        assert param.help == entry.flag.text or entry.flag.argument


def test_a_record_field_becomes_the_option_and_builds_the_record():
    @dataclasses.dataclass(frozen=True)
    class Toy:
        base_model: str = BASE_MODEL.field()
        width: int = option(3, help="How wide.", aliases=("--size", "-s"))
        tags: tuple[str, ...] = option((), help="Tags (repeatable).")
        cache: CacheOptions = nested(CacheOptions, "cache_size", factory=CacheOptions)  # noqa: RUF009

    seen = []

    @options_from(Toy)
    def toy(options=None) -> None:
        seen.append(options)

    cli = typer.Typer()
    cli.command()(toy)
    cli.command("other")(lambda: None)
    params = {p.name: p for p in typer.main.get_command(cli).commands["toy"].params}
    assert set(params) == {
        "base_model", "width", "tags", "cache_dir", "no_cache",  # generated, in field order
        "base", "model_name", "size",  # the old names, hidden
    }  # fmt: skip
    assert params["width"].opts == ["--width"] and params["size"].hidden
    assert params["width"].help == "How wide." and params["width"].default == 3

    run = CliRunner().invoke
    assert run(cli, ["toy", "-b", "m", "-s", "5", "--tags", "a", "--tags", "b"]).exit_code == 0
    got = seen.pop()  # (the cache folder comes from $SVDLORA_CACHE_DIR here)
    assert (got.base_model, got.width, got.tags, got.cache.no_cache) == ("m", 5, ("a", "b"), False)
    assert run(cli, ["toy", "--model-name", "m", "--no-cache"]).exit_code == 0
    got = seen.pop()
    assert (got.base_model, got.width, got.tags, got.cache.no_cache) == ("m", 3, (), True)
    missing = run(cli, ["toy"])
    assert missing.exit_code == 1 and "no --base-model given" in str(missing.exception)


def test_training_options_fill_trainconfig_and_only_it():
    from svdlora_cli.training.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(TRAINING.flags) <= fields
    assert fields - set(TRAINING.flags) == {"precision", "max_grad_norm"}  # --bf16/--fp16; fixed
    built = form(train_teacher.TeacherOptions).build({"base_model": "b", "bf16": True})
    assert built.config == TrainConfig(learning_rate=2e-5, precision="bf16")


def test_old_workspace_keys_still_set_their_options(captured, tmp_path, monkeypatch):
    """A svdlora.toml written with the old names keeps its meaning."""
    monkeypatch.chdir(tmp_path)
    Path("svdlora.toml").write_text(
        '[svd]\nbase_model = "B"\nteacher_model = "T"\nseed = 5\nverify = false\n'
        "[verify]\nmax_rows = 8\n[compare]\neval_limit = 9\n"
        '[train]\nmodel_name = "B"\ntarget_modules = ["q_proj"]\n'
        '[demo]\nmodel = "tiny"\ninits = "random"\n'
    )
    runner = CliRunner()
    for args in (["svd"], ["verify", "a"], ["compare", "runs"], ["train"], ["demo"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    svd_options, verify_options, compare_options, train_options, demo_settings = captured
    assert svd_options.sketch_seed == 5 and svd_options.probe is False
    assert verify_options.eval_limit == 8 and compare_options.generate_limit == 9
    assert train_options.include == ("q_proj",)
    assert demo_settings.base_model == "tiny" and demo_settings.inits == ("random",)
    # The command line wins over the file, under either name.
    runner.invoke(app, ["svd", "--sketch-seed", "6"])
    assert captured[-1].sketch_seed == 6


def test_every_flag_metadata_names_a_real_field():
    for _, record in RECORDS.values():
        for f in dataclasses.fields(record):
            assert FLAG not in f.metadata or f.metadata[FLAG].help
