"""``edgescribe run``: the daemon in the foreground (systemd runs exactly this)."""

from __future__ import annotations

from edgescribe.daemon.config import load_config
from edgescribe.daemon.logging_setup import setup_logging
from edgescribe.daemon.service import Service, install_signal_handlers

DEFAULT_CONFIG = "/etc/edgescribe/config.yaml"


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")
    parser.add_argument(
        "--once", action="store_true", help="stop cleanly once every source has ended (file sources: demos, tests)"
    )
    parser.add_argument(
        "--print-events", action="store_true", help="also write every outbound message to stdout as a JSON line"
    )


def run(args) -> int:
    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.target, verbose=args.verbose)
    service = Service(config, config_path=args.config, once=args.once, print_events=args.print_events)
    install_signal_handlers(service)
    return service.run()
