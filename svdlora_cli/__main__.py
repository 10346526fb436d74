"""`python -m svdlora_cli` runs the CLI."""

from .cli.app import run

if __name__ == "__main__":
    run()
