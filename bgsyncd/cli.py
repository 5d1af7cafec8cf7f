"""The ``bgsyncd`` command line.

Exit status: 0 success, 2 usage or configuration error, 3 (``once``) ended on
a pause not lifted within a minute, 1 anything else (``run`` after a crash
of one of its threads included).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bgsyncd import __version__
from bgsyncd.config.loading import render_settings
from bgsyncd.config.schema import Settings
from bgsyncd.errors import BgsyncdError, ConfigError
from bgsyncd.service.backends import load_settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line, like every other usage error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"bgsyncd: {message} (see 'bgsyncd --help')\n")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: $BGSYNCD_CONFIG, else /etc/bgsyncd/config.toml)",
    )
    parser = _Parser(prog="bgsyncd", description="Hot-folder daemon for the WithoutBG API.")
    parser.add_argument("--version", action="version", version=f"bgsyncd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    sub.add_parser("once", parents=[common], help="process what can be sent now, then exit")
    status = sub.add_parser("status", parents=[common], help="jobs by state, pause, credits")
    status.add_argument("--json", action="store_true", help="one JSON object")
    retry = sub.add_parser(
        "retry", parents=[common], help="put quarantined files back; make done ones anew"
    )
    retry.add_argument("--all", action="store_true", help="every quarantined file")
    retry.add_argument(
        "paths", nargs="*", metavar="PATH", help="quarantined files, or done inputs to make anew"
    )
    credits = sub.add_parser("credits", parents=[common], help="ask the API for credits")
    credits.add_argument("--json", action="store_true", help="one JSON object")
    sub.add_parser("check-config", parents=[common], help="validate and print the settings")
    emulator = sub.add_parser("emulator", help="a local WithoutBG-compatible API", add_help=False)
    emulator.add_argument("args", nargs=argparse.REMAINDER)
    demo = sub.add_parser("demo", parents=[common], help="the quick start, no key needed")
    demo.add_argument("--dir", default="bgsyncd-demo", help="demo folder (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulator"]:
        # The emulator has its own options (and --help); hand them over untouched.
        from bgsyncd import emulator

        return emulator.main(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"bgsyncd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BgsyncdError as exc:
        print(f"bgsyncd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "check-config":
        return _check_config(args.config)
    if command == "credits":
        from bgsyncd.commands.credits import print_credits

        return print_credits(_settings_as_they_are(args.config), args.json)
    if command == "status":
        from bgsyncd.commands.status import print_status

        return print_status(_settings_as_they_are(args.config), args.json)
    if command == "retry":
        from bgsyncd.commands.retry import retry

        if not args.all and not args.paths:
            print("bgsyncd: retry needs --all or at least one PATH", file=sys.stderr)
            return EXIT_USAGE
        settings = load_settings(args.config, create_folders=False)
        return retry(settings, [Path(p) for p in args.paths], everything=args.all)
    if command in ("run", "once"):
        from bgsyncd.service.daemon import run_daemon

        return run_daemon(args.config, once=command == "once")
    if command == "demo":
        from bgsyncd.commands.demo import run_demo

        return run_demo(Path(args.dir))
    raise AssertionError(f"unhandled command {command}")  # pragma: no cover


def _check_config(path: str | None) -> int:
    settings = load_settings(path, create_folders=False)
    sys.stdout.write(render_settings(settings))
    for folder in settings.folders:
        for name in ("outbox", "quarantine", "done"):
            target: Path | None = getattr(folder, name)
            if target is not None and not target.exists():
                print(f"# note: {folder.name}.{name} {target} will be created at start")
    if not settings.folders:
        print("# note: no [[folder]] configured: 'run' and 'once' need at least one")
    return EXIT_OK


def _settings_as_they_are(path: str | None) -> Settings:
    """Settings for the commands that run beside the daemon: folders neither made nor checked.

    A quarantine path that became a file, or an inbox that is gone, is the
    daemon's business (it reports them); ``status`` and ``credits`` still answer.
    """
    return load_settings(path, create_folders=False, check_folders=False)
