"""Entry point: load every command module, run the app, turn user errors into one line and exit code 2."""

from __future__ import annotations

import importlib
import pkgutil
import sys

from rich.markup import escape

import cli
from cli.app import app, console
from nas.errors import HwnasError


def _load_commands() -> None:
    for module in sorted(m.name for m in pkgutil.iter_modules(cli.__path__) if m.name.startswith("cmd_")):
        importlib.import_module(f"cli.{module}")


_load_commands()


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if e.code in (0, None) and "torch.distributed" in sys.modules:  # torchrun: leave the group before teardown
            from nas.train.distributed import leave_process_group

            leave_process_group()
        raise
    except HwnasError as e:
        one_line = " ".join(str(e).split())  # library messages (YAML, pandas) may span lines
        console.print(f"[red]error:[/red] {escape(one_line)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: rerun the same command (same --out) to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
