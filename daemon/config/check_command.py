"""``edgescribe check-config FILE``: validate a configuration without starting anything.

Prints one line per problem (``file:line: key: got ...; expected ...``) on stderr and exits
with status 2, or prints a short summary and exits 0; warnings are ``file:line: key:
warning: ...`` lines on stderr either way. It validates exactly as ``edgescribe run`` does
(same loader, same checks of the files the configuration names) and imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from edgescribe.daemon.config import InvalidConfig, load_config
from edgescribe.daemon.config.overlay import flat_keys, overlay_path, read_overlay
from edgescribe.daemon.config.reference import plain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the YAML configuration, e.g. /etc/edgescribe/config.yaml")
    parser.add_argument(
        "--show",
        action="store_true",
        help="print the effective configuration, every default filled in",
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file, warn=lambda line: print(line, file=sys.stderr))
    except InvalidConfig as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        count = len(error.problems)
        print(f"{args.file}: {count} problem{'s' if count != 1 else ''} found", file=sys.stderr)
        return error.exit_code
    if args.show:
        sys.stdout.write(yaml.safe_dump(plain(config), sort_keys=False, default_flow_style=False))
    else:
        print(f"{args.file}: OK (device_id {config.device_id})")
    # remote changes (config/set) are merged over the file; name each with its origin
    overlay = overlay_path(config.service.state_dir)
    for key, value in flat_keys(read_overlay(overlay)):
        print(f"# {key}: {json.dumps(value)} (from {overlay}, set remotely; every other value is the file's or default)")
    return 0

