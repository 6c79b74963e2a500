"""Entry point: the click group, error handling and exit codes.

Exit codes: 0 success; 2 bad input or usage (one line naming the file and the problem, no
traceback unless ``--debug``); 1 an unexpected failure.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
import warnings

import click

from georaster_quant import __version__
from georaster_quant.errors import GeoRasterQuantError, GeoRasterQuantWarning

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


class _State:
    debug = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every cleanup runs as for Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _show_warning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    if issubclass(category, GeoRasterQuantWarning):
        click.echo(f"Warning: {message}", err=True)
    else:
        logging.getLogger("georaster_quant").debug("%s: %s", category.__name__, message)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Run 'georaster-quant COMMAND --help' for a command's options and examples.",
)
@click.version_option(__version__, prog_name="georaster-quant")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors (anywhere on the line).")
@click.option("-v", "--verbose", count=True, help="More log output (repeatable).")
def cli(debug: bool, verbose: int) -> None:
    """Classify scenes in large multispectral rasters with quantized CNNs on CPUs.

    \b
    A first run on the built-in synthetic scene:
      georaster-quant demo --output runs/demo
    \b
    Or step by step:
      georaster-quant synth data/train --width 2048 --height 2048 --seed 0
      georaster-quant train --image data/train/scene.tif --labels data/train/labels.tif \\
          --output runs/best
      georaster-quant evaluate --weights runs/best --image data/test/scene.tif \\
          --labels data/test/labels.tif --stride 16
      georaster-quant info runs/best
    """
    _State.debug = debug
    level = logging.WARNING - 10 * verbose
    # The level goes on the handler too: dask.distributed's loggers log at INFO themselves
    # and pass their records up to it. Their shutdown noise (a closed comm logged as an error
    # with a traceback after a successful run) shows only with -v.
    handler = logging.StreamHandler()
    handler.setLevel(level)
    if not verbose:
        handler.addFilter(lambda r: not r.name.startswith(("distributed", "tornado")))
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", handlers=[handler]
    )
    if not (verbose or debug):
        # GDAL's own threads (parallel block decoding and range requests) print errors
        # straight to stderr; the read that failed raises here and says why (or is retried).
        os.environ.setdefault("CPL_LOG", os.devnull)
    warnings.showwarning = _show_warning


def _register() -> None:
    from georaster_quant.cli import (
        demo,
        evaluate,
        export,
        info,
        predict,
        quantize,
        synth,
        train,
    )

    for module in (synth, train, quantize, export, predict, evaluate, info, demo):
        cli.add_command(module.command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with the documented exit codes.

    ``--debug`` may come anywhere on the line (it is the group's option: moved to the front).
    """
    args = list(argv if argv is not None else sys.argv[1:])
    _State.debug = "--debug" in args
    if _State.debug:
        args = ["--debug", *(a for a in args if a != "--debug")]
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    if main_thread and previous is None:  # set outside Python: put the default back after
        previous = signal.SIG_DFL
    try:
        try:
            cli.main(args=args, prog_name="georaster-quant", standalone_mode=False)
        except click.exceptions.Abort as exc:  # click's form of Ctrl-C (and SIGTERM)
            if isinstance(exc.__cause__, KeyboardInterrupt):
                raise exc.__cause__ from None
            click.echo("Aborted.", err=True)
            sys.exit(EXIT_FAILURE)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    except click.exceptions.NoArgsIsHelpError as exc:  # the bare command: its help
        exc.show()
        sys.exit(EXIT_BAD_INPUT)
    except click.UsageError as exc:  # one line, as for every bad input
        where = exc.ctx.command_path if exc.ctx else "georaster-quant"
        click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT if exc.exit_code == 2 else exc.exit_code)
    except GeoRasterQuantError as exc:
        if _State.debug:
            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        click.echo(
            f"{'Terminated' if terminated else 'Interrupted'}: outputs are written only when "
            "complete (an interrupted predict continues with --resume).",
            err=True,
        )
        sys.exit(143 if terminated else 130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if _State.debug:
            traceback.print_exc()
        first = next(iter(str(exc).strip().splitlines()), "")  # runtimes raise pages
        click.echo(
            f"Error: unexpected failure: {type(exc).__name__}: {first} (rerun with --debug)",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
    sys.exit(0)
