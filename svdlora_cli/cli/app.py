"""The `svdlora` Typer root: workspace defaults, error mapping and subcommand registry."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import SvdloraError
from . import cache as cache_cmd
from . import compare as compare_cmd
from . import delta as delta_cmd
from . import demo as demo_cmd
from . import init as init_cmd
from . import layer_report as layer_report_cmd
from . import svd as svd_cmd
from . import sweep as sweep_cmd
from . import train as train_cmd
from . import train_teacher as train_teacher_cmd
from . import verify as verify_cmd
from ._output import setup_logging, stderr
from .allocator import tune_malloc


def show_error(error: SvdloraError) -> None:
    """One `Error:` line and one `Hint:` line on stderr (naming the rank, beyond rank 0);
    a non-UTF-8 path in them shows its odd bytes as `\\xNN`."""
    from ..files import printable

    rank = int(os.environ.get("RANK", "0"))
    where = f"[rank {rank}] " if rank else ""
    message = printable(where + error.message).replace("\n", " ")
    stderr.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if error.hint:
        hint = printable(error.hint).replace("\n", " ")
        stderr.print(f"[bold]Hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)


def os_failure(exc: BaseException) -> SvdloraError | None:
    """An OS refusal to write (disk full, quota, read-only, permissions) as a user error."""
    import errno

    import click

    from ..files import WRITE_ERRNOS, errno_of, write_failure

    if isinstance(exc, (click.exceptions.ClickException, click.exceptions.Exit, click.Abort)):
        return None
    code = errno_of(exc)
    if code not in WRITE_ERRNOS:
        return None
    path = getattr(exc, "filename", None)
    if code in (errno.EACCES, errno.EPERM):
        return SvdloraError(
            f"permission denied: {path}" if path else "permission denied",
            "check the permissions of that path, or choose another --output-dir / --cache-dir",
        )
    if path:
        return write_failure(path, code)
    return SvdloraError(
        f"a write failed: {os.strerror(code).lower()}",
        "free space on the disk that holds the output folder, or choose another --output-dir",
    )


def _texts(value: Any) -> list[str]:
    """The strings (paths included) in an option's value."""
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _texts(v)]
    return []


def _flag(param: Any) -> str:
    return next((o for o in param.opts if o.startswith("--")), (param.name or "").upper())


def _source(ctx: Any, name: str) -> str:
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else ""


def refuse_non_utf8(ctx: Any) -> None:
    """A path (or other text) from non-UTF-8 bytes is refused before the command runs:
    svdlora records paths in safetensors, JSON and TOML files, which hold UTF-8 only."""
    from ..errors import InvalidOptionError
    from ..files import is_utf8, printable

    for param in ctx.command.params:
        bad = next((t for t in _texts(ctx.params.get(param.name)) if not is_utf8(t)), None)
        if bad is None:
            continue
        env = param.envvar if _source(ctx, param.name) == "ENVIRONMENT" else None
        raise InvalidOptionError(
            f"{_flag(param)} {printable(bad)}{f' (from ${env})' if env else ''} is not valid UTF-8",
            "rename it to a UTF-8 name, or link to it from one (ln -s OLD NEW) and pass that: "
            "svdlora writes paths into safetensors, JSON and TOML files, which hold UTF-8 only",
        )


def _mentioned(text: str, value: Any, param: Any) -> bool:
    """Whether an error's text names the option (its --flag) or its value (a path...)."""
    forms = {f for f in param.opts if f.startswith("--")}
    for item in _texts(value):
        if len(item) >= 2:
            forms |= {item, str(Path(item).expanduser())}
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                forms.add(str(Path(item).expanduser().resolve()))
    return any(re.search(rf"(?<![\w.-]){re.escape(f)}(?![\w-])", text) for f in forms)


def note_workspace_origin(error: SvdloraError, ctx: Any) -> SvdloraError:
    """Name the svdlora.toml keys behind an error: the command took an option from the
    workspace file and the error names that option or its value."""
    path = ctx.obj.get("workspace") if isinstance(ctx.obj, dict) else None
    command = ctx.meta.get("svdlora.command")
    if path is None or command is None or command is ctx:
        return error
    text = f"{error.message}\n{error.hint}"
    names = [
        p.name
        for p in command.command.params
        if p.name
        and _source(command, p.name) == "DEFAULT_MAP"
        and _mentioned(text, command.params.get(p.name), p)
    ]
    if not names:
        return error
    from ..workspace import key_in_file

    parts, node = [], command
    while node is not None and node is not ctx:
        parts.insert(0, node.info_name or "")
        node = node.parent
    keys = ", ".join(key_in_file(Path(path), ".".join(parts), n) for n in names)
    file = Path(path).resolve()
    error.message = f"{error.message} ({keys}, set in {file})"
    fix = f"fix {keys} in {file}"
    error.hint = f"{error.hint}; or {fix}" if error.hint else fix
    return error


def index_failure(exc: BaseException) -> SvdloraError | None:
    """torch's `IndexError: index out of range in self`: an id past an embedding table."""
    if not (isinstance(exc, IndexError) and "index out of range in self" in str(exc)):
        return None
    return SvdloraError(
        "a token or position id is past the end of the model's embedding table "
        "(IndexError: index out of range in self)",
        "use the tokenizer that belongs to the model (a larger vocabulary than the model's "
        "embedding rows fails here), or resize the embeddings; or lower --max-length",
    )


class CommandContext(typer.Context):
    """Every command's context: the running one is kept in `meta` (an error can then name
    the svdlora.toml keys it took values from), and its values are checked before it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meta["svdlora.command"] = self

    def invoke(self, callback: Any, /, *args: Any, **kwargs: Any) -> Any:
        if callback is self.command.callback:
            refuse_non_utf8(self)
            if not hasattr(self.command, "commands"):  # a command, not a group's callback
                tune_malloc()  # before it allocates anything large
        return super().invoke(callback, *args, **kwargs)


def _use_context(command: Any) -> None:
    command.context_class = CommandContext
    for sub in getattr(command, "commands", {}).values():
        _use_context(sub)


class SvdloraGroup(TyperGroup):
    """Maps typed core errors and Ctrl-C to clean messages (SVDLORA_DEBUG=1 keeps tracebacks)."""

    context_class = CommandContext

    def invoke(self, ctx: Any) -> Any:
        from ..distributed import split_across_processes

        _use_context(self)

        # The command line after the root options (click >= 8.2 keeps the command's name
        # apart), for the Ctrl-C advice.
        named = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        args = [*named, *ctx.args]
        try:
            with split_across_processes():  # under torchrun, every rank runs the command
                return super().invoke(ctx)
        except SvdloraError as exc:
            if os.environ.get("SVDLORA_DEBUG"):
                raise
            show_error(note_workspace_origin(exc, ctx))
            raise typer.Exit(1) from None
        except KeyboardInterrupt as stop:
            advice = train_cmd.resume_advice(args, ctx.params.get("config"), stop)
            stderr.print(
                f"[bold]Interrupted.[/] {escape(advice)}"
                if advice
                else "[bold]Interrupted.[/] Finished per-tensor results are kept in the cache; "
                "rerun the same command to resume.",
                soft_wrap=True,  # the command stays on one line, to copy
            )
            raise typer.Exit(130) from None
        except Exception as exc:  # only OS write refusals and id overflows; the rest re-raise
            failure = os_failure(exc) or index_failure(exc)
            if failure is None or os.environ.get("SVDLORA_DEBUG"):
                raise
            show_error(note_workspace_origin(failure, ctx))
            raise typer.Exit(1) from None


app = typer.Typer(
    name="svdlora",
    cls=SvdloraGroup,
    help="Is full fine-tuning's dW low rank? Streamed dW, cached SVD, SVD-initialised LoRA.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("init")(init_cmd.init)
app.command("train-teacher")(train_teacher_cmd.train_teacher)
app.command("delta")(delta_cmd.delta)
app.command("svd")(svd_cmd.svd)
app.command("verify")(verify_cmd.verify)
app.command("train")(train_cmd.train)
app.command("compare")(compare_cmd.compare)
app.command("layer-report")(layer_report_cmd.layer_report)
app.command("sweep")(sweep_cmd.sweep)
app.command("demo")(demo_cmd.demo)
app.add_typer(cache_cmd.app, name="cache")


def _option_names(command: Any, prefix: str = "") -> dict[str, list[str]]:
    """Option names of every (nested) subcommand, keyed "svd" or "cache.info"."""
    names: dict[str, list[str]] = {}
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            names.update(_option_names(sub, f"{prefix}{name}."))
    elif prefix:
        names[prefix.rstrip(".")] = [p.name for p in command.params if p.name]
    return names


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"svdlora {version('svdlora')}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Workspace file with option defaults (default: ./svdlora.toml)."
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Load option defaults from the workspace file; the command line always wins."""
    from ..workspace import default_map, find_workspace

    setup_logging()
    path = find_workspace(config)
    if path is not None:
        ctx.default_map = default_map(path, _option_names(ctx.command))
    ctx.obj = {"workspace": path}


def main() -> None:
    """Console-script entry point."""
    from ..distributed import release_process_group

    quiet_libraries()
    succeeded = False
    try:
        app(prog_name="svdlora")
    except SystemExit as done:  # click ends every run with one; 0 or None is success
        succeeded = done.code in (0, None)
        raise
    except KeyboardInterrupt:  # outside a command (e.g. while importing): still a clean stop
        stderr.print("[bold]Interrupted.[/]")
        sys.exit(130)
    finally:
        release_process_group(succeeded)  # ours, or accelerate's under train / train-teacher


def quiet_libraries() -> None:
    """Our own progress bars replace the hub's and transformers' (SVDLORA_DEBUG keeps them)."""
    if not os.environ.get("SVDLORA_DEBUG"):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
        # PEFT's advice for PiSSA/OLoRA adapters; svdlora already saves them as plain LoRAs.
        warnings.filterwarnings("ignore", message=r".* changes the base weights of the model")


def run() -> None:
    """Console-script entry point: `main`, then `exit_now` (callers that need the usual
    interpreter exit, e.g. to run code after it, call `main`)."""
    try:
        main()
    except SystemExit as done:
        exit_now(done.code)
        raise


def exit_now(code: object) -> None:
    """End the process without the interpreter's teardown, which frees torch's and
    transformers' module objects one by one: about 1 s of a cold `svd` on 2 cores.

    The atexit hooks run first (logging, temporary folders, multiprocessing) and the
    standard streams are flushed. It returns, and Python exits as usual, when another
    thread is alive (Python would wait for it), under a profiler or tracer (cProfile
    writes its file after the program), for a code that is not an integer (Python
    prints it), or with SVDLORA_DEBUG set.
    """
    import atexit
    import threading

    run_hooks = getattr(atexit, "_run_exitfuncs", None)
    code = 0 if code is None else code
    if (
        os.environ.get("SVDLORA_DEBUG")
        or run_hooks is None
        or threading.active_count() > 1
        or sys.getprofile() is not None
        or sys.gettrace() is not None
        or not isinstance(code, int)
    ):
        return
    run_hooks()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
