"""The `hpctrain` command: parses arguments, calls one library function, maps errors to exit codes.

Library modules are imported inside each command so that `hpctrain --help` starts instantly.
"""
import argparse
import signal
import sys

from hpctrain import __version__
from hpctrain.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def cmd_env(args):
    from hpctrain import envinfo

    envinfo.main(as_json=args.json)


def build_parser():
    parser = _Parser(prog="hpctrain", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hpctrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("env", help="print the software stack, devices and scheduler context")
    p.add_argument("--json", action="store_true", help="emit JSON")
    p.set_defaults(func=cmd_env)
    return parser


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds, so temporary outputs are removed


def main(argv=None):
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        args.func(args)
    except UserError as e:
        print(f"hpctrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hpctrain {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
