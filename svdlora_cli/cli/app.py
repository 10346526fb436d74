"""The `svdlora` Typer root: workspace defaults, error mapping and subcommand registry."""

from __future__ import annotations

import os
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


def show_error(error: SvdloraError) -> None:
    """One `Error:` line and one `Hint:` line on stderr (naming the rank, beyond rank 0)."""
    rank = int(os.environ.get("RANK", "0"))
    where = f"[rank {rank}] " if rank else ""
    stderr.print(
        f"[bold red]Error:[/] {escape(where + error.message)}", highlight=False, soft_wrap=True
    )
    if error.hint:
        stderr.print(f"[bold]Hint:[/] {escape(error.hint)}", highlight=False, soft_wrap=True)


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


class SvdloraGroup(TyperGroup):
    """Maps typed core errors and Ctrl-C to clean messages (SVDLORA_DEBUG=1 keeps tracebacks)."""

    def invoke(self, ctx: Any) -> Any:
        from ..distributed import split_across_processes

        try:
            with split_across_processes():  # under torchrun, every rank runs the command
                return super().invoke(ctx)
        except SvdloraError as exc:
            if os.environ.get("SVDLORA_DEBUG"):
                raise
            show_error(exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stderr.print(
                "[bold]Interrupted.[/] Finished per-tensor results are kept in the cache; "
                "rerun the same command to resume."
            )
            raise typer.Exit(130) from None
        except Exception as exc:  # only OS write refusals are mapped; the rest re-raise
            failure = os_failure(exc)
            if failure is None or os.environ.get("SVDLORA_DEBUG"):
                raise
            show_error(failure)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
