"""The ``edgescribe`` command: one entry point, one module per subcommand.

Each subcommand lives in the module that owns its job and exposes ``add_arguments(parser)``
and ``run(args) -> int``. Only the module of the subcommand being run is imported: the
others' dependency trees stay unloaded (the daemon's ``run`` never loads onnx, which only
``export`` needs; ``check-config`` never loads onnxruntime).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from edgescribe.engines.errors import EdgescribeError

log = logging.getLogger(__name__)

# name -> (module, one-line help)
COMMANDS = {
    "export": ("edgescribe.engines.export_command", "convert Whisper weights into a model package (ONNX graphs)"),
    "transcribe": ("edgescribe.engines.transcribe_command", "transcribe audio files with a model package"),
    "build-engines": ("edgescribe.daemon.build_engines_command", "build TensorRT engines for this device"),
    "devices": ("edgescribe.daemon.devices_command", "list ALSA capture devices"),
    "check-config": ("edgescribe.daemon.config.check_command", "validate a configuration file"),
    "run": ("edgescribe.daemon.run_command", "run the daemon"),
    "fleet": ("edgescribe.daemon.fleet_command", "show every device on a broker, one row each"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="edgescribe", description="On-device speech to text for factory floors.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return importlib.import_module(COMMANDS[args.command][0]).run(args)
    except EdgescribeError as error:
        print(f"edgescribe {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
