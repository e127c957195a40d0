"""The ``systolic-quantize`` command line: one click group, one module per command."""

from __future__ import annotations

import importlib
import sys
import warnings

import click

from systolic_sdk import __version__
from systolic_sdk.errors import SdkError

# (module, attribute) of each subcommand, in the order --help lists them.
COMMANDS: list[tuple[str, str]] = [
    ("systolic_sdk.cli.demo_cmd", "demo_command"),
    ("systolic_sdk.cli.quantize_cmd", "quantize_command"),
    ("systolic_sdk.cli.calibrate_cmd", "calibrate_command"),
    ("systolic_sdk.cli.calibrate_cmd", "static_runner_command"),
    ("systolic_sdk.cli.emulate_cmd", "emulate"),
    ("systolic_sdk.cli.validate_cmd", "validate_command"),
    ("systolic_sdk.cli.vectors_cmd", "export_vectors"),
    ("systolic_sdk.cli.conformance_cmd", "conformance"),
    ("systolic_sdk.cli.report_cmd", "report_command"),
]


class UserError(click.ClickException):
    """An SdkError surfaced on the command line: one line, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - click API
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # COMMANDS order: the main job first

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # noqa: D102 - click API
        """Errors as one ``error: ...`` line (usage errors too, exit code 2) and warnings
        as ``warning: ...`` lines, instead of click's and Python's multi-line forms."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                rv = super().main(*args, standalone_mode=False, **kwargs)
            except click.UsageError as exc:
                where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
                message = exc.format_message().strip().splitlines()[0]
                click.echo(f"error: {where}{message} (see --help)", err=True)
                sys.exit(2)
            except click.ClickException as exc:
                exc.show()
                sys.exit(exc.exit_code)
            except click.Abort:
                click.echo("error: aborted", err=True)
                sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SdkError as exc:
            raise UserError(str(exc)) from None


@click.group(
    cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="systolic-quantize")
def cli() -> None:
    """Quantize ONNX models for onnxruntime on a CPU or for the Systolic int8
    accelerator, emulate the accelerator bit for bit, and prove the result.

    \b
    Start here:
      systolic-quantize demo                      quantize the shipped model for Systolic,
                                                  validate it bit for bit, score it
      systolic-quantize quantize M.onnx -o Q.onnx --calibration-data data.npz
      systolic-quantize COMMAND --help            every option of a command
    """


for _module, _attr in COMMANDS:
    cli.add_command(getattr(importlib.import_module(_module), _attr))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="systolic-quantize")
