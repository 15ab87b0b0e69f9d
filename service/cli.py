"""The `remediator` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from service import __version__, logs
from service.app import create_app
from service.settings import SettingsError, load_secrets, load_settings
from service.store import StoreError

log = logging.getLogger("remediator")


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        secrets = load_secrets(settings)
    except SettingsError as exc:
        print(f"remediator: {exc}", file=sys.stderr)
        return 1
    logs.configure(settings.log_level)
    app = create_app(settings, secrets)
    log.info(
        "serving",
        extra={"listen": f"{settings.listen_host}:{settings.listen_port}", "version": __version__},
    )
    # run_app turns SIGTERM/SIGINT into a graceful exit: stop accepting, let in-flight requests finish
    # (up to the grace period), then run every cleanup context (which closes the store).
    try:
        web.run_app(
            app,
            host=settings.listen_host,
            port=settings.listen_port,
            shutdown_timeout=settings.limits.shutdown_grace_seconds,
            print=None,
            access_log=None,
        )
    except (StoreError, OSError) as exc:
        print(f"remediator: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        load_secrets(settings)
    except SettingsError as exc:
        print(f"remediator: {exc}", file=sys.stderr)
        return 1
    print(f"{args.config or '(defaults)'}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remediator", description="Alert-driven remediation for Beamline Router.")
    parser.add_argument("--version", action="version", version=f"remediator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="receive Alertmanager webhooks and remediate")
    serve.add_argument("--config", type=Path, default=None, help="remediator.yaml (defaults apply without one)")
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check", help="validate config, rules and playbooks")
    check.add_argument("--config", type=Path, default=None)
    check.set_defaults(run=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
