"""The `remediator` command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service import __version__, logs
from service.flow.admission import would_admit
from service.reports.report import render_markdown, report_json
from service.rules.coverage import CoverageReport, coverage, load_alerting_rules
from service.rules.explain import explain_alert, format_explanation, parse_alerts
from service.rules.loading import check_config
from service.rules.ruleset import Alert, NotificationContext, RuleSet
from service.rules.ruletest import run_rule_tests
from service.rules.summary import rule_reach, service_mode
from service.settings import Settings, SettingsError, load_secrets, load_settings, open_access
from service.store import ExecutionRecord, StoreError, new_store
from service.web import httpserver
from service.web.app import create_app, dispatch_settings
from service.yamlload import ConfigError, ConfigErrors

log = logging.getLogger("remediator")


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        secrets = load_secrets(settings)
    except SettingsError as exc:
        print(f"remediator: {exc}", file=sys.stderr)
        return 1
    # Refuse to start rather than serve with no rules: /-/ready would stay 503 and alerts pile up unseen.
    ruleset, errors = _check_config(settings)
    if errors or ruleset is None:
        _errors([f"remediator: refusing to serve: {len(errors)} error(s) in rules/playbooks", *errors])
        return 1
    logs.configure(settings.log_level)
    for warning in open_access(secrets):
        log.warning(warning)
    _log_reach(ruleset, settings.dry_run)
    log.info(
        "serving",
        extra={
            "listen": f"{settings.listen_host}:{settings.listen_port}",
            "version": __version__,
            "mode": service_mode(settings.dry_run),
        },
    )
    # SIGTERM/SIGINT end it gracefully: stop accepting, let in-flight requests finish (up to the grace
    # period), then run every cleanup context (which closes the store).
    # The start-up heap (modules, rules, settings) lives as long as the process: out of the collector's
    # sight, a full collection walks only what serving makes, and pauses the loop for that long only.
    gc.collect()
    gc.freeze()
    try:
        httpserver.run(
            create_app(settings, secrets),
            settings.listen_host,
            settings.listen_port,
            settings.server,
            shutdown_timeout=settings.limits.shutdown_grace_seconds,
        )
    except (StoreError, ConfigErrors, SettingsError, OSError) as exc:
        # Start-up failures the operator must fix (a store another process owns or that cannot be
        # written, a port in use): one line that says so, not a traceback.
        print(f"remediator: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _log_reach(ruleset: RuleSet, dry_run: bool) -> None:
    """Before serving, say what the service will act on, so a first run never acts unannounced."""
    for warning in (w for loaded in ruleset.playbooks.values() for w in loaded.warnings):
        log.warning(str(warning))
    reach = rule_reach(ruleset, dry_run)
    for each in reach:
        log.info(
            "rule loaded",
            extra={"rule": each.rule, "playbook": each.playbook, "mode": each.mode, "target": each.target,
                   "acts_on": each.acts_on},
        )  # fmt: skip
    if dry_run:
        log.warning(
            f"dry run: {len(reach)} enabled rules are decided and recorded, no playbook runs "
            "(dry_run: false in the config, or REMEDIATOR_DRY_RUN=false, to act)"
        )
    else:
        live = sum(1 for each in reach if each.mode == "enforce")
        log.log(
            logging.WARNING if live else logging.INFO,
            f"live: {live} enabled rules run their playbooks against the hosts and ports logged above "
            "(dry_run: true only records what would run)",
        )


def _check_config(settings: Settings) -> tuple[RuleSet | None, list[ConfigError]]:
    """The rules and playbooks the settings name, loaded and cross-checked (with the inventory)."""
    return check_config(
        _globs(settings.rules), _globs(settings.playbooks), settings.base_dir, settings.inventory_path()
    )


def _globs(patterns: Sequence[str]) -> list[str]:
    # An env override such as REMEDIATOR_RULES="" yields [""]: no glob, not "the base directory".
    return [p for p in patterns if p]


def _errors(lines: Iterable[object]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def _load_rules(config: Path | None) -> RuleSet | None:
    """The rules and playbooks the settings name; every error printed and None when invalid."""
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        _errors([exc])
        return None
    return _rules_of(settings)


def _rules_of(settings: Settings) -> RuleSet | None:
    ruleset, errors = _check_config(settings)
    if ruleset is None:
        _errors(errors)
        return None
    return ruleset


def _check(args: argparse.Namespace) -> int:
    problems: list[object] = []
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        _errors([exc])
        return 1  # without settings there is no telling where the rules are
    try:
        load_secrets(settings)
    except SettingsError as exc:
        problems.append(exc)
    ruleset, errors = _check_config(settings)
    problems += errors
    known_hosts = settings.ssh.known_hosts
    if known_hosts is not None and not settings.resolve(known_hosts).is_file():
        problems.append(f"ssh.known_hosts: no such file: {settings.resolve(known_hosts)}")
    notes: list[str] = []
    if args.alert_rules:
        # Command-line paths are the user's, relative to where they run the command.
        alerts, alert_errors = load_alerting_rules(args.alert_rules, Path("."))
        problems += alert_errors
        if ruleset is not None:
            report = coverage(ruleset, alerts)
            problems += CoverageReport(report.uncovered, report.unused, ()).lines()
            # Rules on series labels only cannot be judged offline: worth saying, not a failure.
            notes = CoverageReport((), (), report.unchecked).lines()
    _errors(problems)
    for note in notes:
        print(f"note: {note}")
    if problems:
        print(f"{len(problems)} problem{'' if len(problems) == 1 else 's'} found")
        return 1
    assert ruleset is not None
    warnings = [warning for loaded in ruleset.playbooks.values() for warning in loaded.warnings]
    _errors(warnings)  # doubtful, not wrong: printed, and the check still passes
    counted = f", {len(warnings)} warning{'' if len(warnings) == 1 else 's'}" if warnings else ""
    hosts = "" if ruleset.inventory is None else f", {len(ruleset.inventory.hosts)} inventory hosts"
    print(f"ok: {len(ruleset.rules)} rules, {len(ruleset.playbooks)} playbooks{hosts}{counted}")
    return 0


def _test(args: argparse.Namespace) -> int:
    ruleset = _load_rules(args.config)
    if ruleset is None:
        return 1
    passed, report = run_rule_tests(args.files, ruleset)
    print(report, end="")
    return 0 if passed else 1


def _read_json(path: str) -> Any:
    source = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return json.loads(source)


def _explain(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        _errors([exc])
        return 1
    ruleset = _rules_of(settings)
    if ruleset is None:
        return 1
    try:
        alerts, context = parse_alerts(_read_json(args.alerts))
    except OSError as exc:
        _errors([f"{args.alerts}: cannot read: {exc.strerror}"])
        return 1
    except ValueError as exc:  # bad JSON (JSONDecodeError) or a payload parse_alerts refuses
        _errors([f"{args.alerts}: {exc}"])
        return 1
    try:
        explained = asyncio.run(_explain_with_admission(settings, ruleset, alerts, context))
    except StoreError as exc:
        _errors([f"remediator: {exc}"])
        return 1
    result = {"alerts": explained}
    print(json.dumps(result, indent=2) if args.json else format_explanation(result), end="\n" if args.json else "")
    return 0


async def _explain_with_admission(
    settings: Settings, ruleset: RuleSet, alerts: Sequence[Alert], context: NotificationContext
) -> list[dict[str, Any]]:
    """Each alert explained, with whether admission would let each run start right now, read from the
    store the config names (opened read-only, beside a running service); without a store, not asked.
    Alertmanager silences are the service's to watch: not consulted here."""
    path = settings.resolve(settings.store.path)
    explained = []
    store = new_store(path) if path.is_file() else None  # opening none would create an empty one
    if store is not None:
        await store.open(own=False)
    try:
        for alert in alerts:
            matches = ruleset.match(alert, context)
            entry = explain_alert(ruleset, alert, context, matches)
            if store is None:
                entry["admission"], entry["admission_note"] = None, f"no store (none at {path})"
            else:
                now, guard = datetime.now(UTC), dispatch_settings(settings)
                entry["admission"] = [
                    {
                        "rule": m.rule.name,
                        **(await would_admit(store, m, now, guard.storm, guard.dry_run, None)).to_dict(),
                    }
                    for m in matches
                    if m.ok
                ]
            explained.append(entry)
    finally:
        if store is not None:
            await store.close()
    return explained


async def _read_record(path: Path, execution_id: str) -> ExecutionRecord | None:
    store = new_store(path)
    await store.open(own=False)  # the service may be running and owning it
    try:
        return await store.get_execution(execution_id)
    finally:
        await store.close()


def _report(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        _errors([exc])
        return 1
    path = settings.resolve(settings.store.path)
    if not path.is_file():  # opening would create an empty store, which helps nobody
        _errors([f"remediator: no store at {path} (is --config the service's?)"])
        return 1
    try:
        record = asyncio.run(_read_record(path, args.id))
    except StoreError as exc:
        _errors([f"remediator: {exc}"])
        return 1
    if record is None:
        _errors([f"remediator: no execution {args.id!r} in {path}"])
        return 1
    if args.format == "md":
        print(render_markdown(record, f"{settings.external_url}/executions/{args.id}"), end="")
    elif args.format == "html":
        from service.reports.html import render_report_html  # the page templates load only for this format

        runbook = _runbook(settings, record.execution["playbook"])
        print(render_report_html(record, settings.alertmanager_url, runbook, datetime.now(UTC)), end="")
    else:
        print(json.dumps(report_json(record), indent=2, default=str))
    return 0


def _runbook(settings: Settings, playbook: str) -> str:
    """The runbook reference of the playbook as the config loads it now (as the pages show it); "" when
    the rules and playbooks do not load, which is said on stderr."""
    ruleset, errors = _check_config(settings)
    if ruleset is None:
        _errors([f"remediator: no runbook reference: the rules and playbooks do not load ({len(errors)} error(s))"])
        return ""
    loaded = ruleset.playbooks.get(playbook)
    return loaded.playbook.runbook if loaded else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remediator", description="Alert-driven remediation for Beamline Router.")
    parser.add_argument("--version", action="version", version=f"remediator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="receive Alertmanager webhooks and remediate")
    serve.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="remediator.yaml (defaults apply without one)"
    )
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check", help="validate config, secrets, rules and playbooks")
    check.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="remediator.yaml (defaults apply without one)"
    )
    check.add_argument(
        "--alert-rules",
        nargs="+",
        metavar="FILE",
        default=[],
        help="Prometheus rule files (globs): report alerts no rule covers and rules that match no alert",
    )
    check.set_defaults(run=_check)

    test = commands.add_parser("test", help="run rule unit tests")
    test.add_argument("--config", type=Path, default=None, metavar="FILE", help="names the rules and playbooks to test")
    test.add_argument("files", nargs="+", type=Path, metavar="FILE")
    test.set_defaults(run=_test)

    explain = commands.add_parser("explain", help="which rules match these alerts and why; runs nothing")
    explain.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="names the rules, playbooks and store"
    )
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.add_argument(
        "alerts", metavar="ALERTS.json", help="a webhook body, a list of alerts or one alert; - for stdin"
    )
    explain.set_defaults(run=_explain)

    report = commands.add_parser("report", help="the report of one execution, from the store")
    report.add_argument("--config", type=Path, default=None, metavar="FILE", help="names the store")
    report.add_argument(
        "--format",
        choices=("json", "md", "html"),
        default="json",
        help="json (the API's report), md (readable) or html (the page, standalone); default: %(default)s",
    )
    report.add_argument("id", metavar="ID")
    report.set_defaults(run=_report)

    # The demo lives in the checkout's demo/ package, not in this one; its arguments are its own (main()).
    commands.add_parser(
        "demo", help="the whole loop on this machine with the real binaries (from a checkout)", add_help=False
    )
    return parser


def _demo(demo_args: Sequence[str]) -> int:
    """`remediator demo`: the tour in the checkout's demo/ package (python -m demo), imported only now."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / "demo" / "tour.py").is_file():
        _errors(
            [
                "remediator demo: the demo needs a checkout of the repository (its demo/, rules/ and alertmanager/);"
                " this remediator is installed without one. Clone it and run `python -m demo` there."
            ]
        )
        return 2
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from demo.tour import main as demo_main

    result: int = demo_main(demo_args)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        return _demo(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
