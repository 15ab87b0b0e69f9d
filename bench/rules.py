"""Rule matching at scale: indexed RuleSet vs a naive linear scan, measured in the same run.

    .venv/bin/python bench/rules.py [--rules 10000 100000] [--alerts 2000]

Synthetic rules look like real ones: every rule but a few has ``alertname="..."`` (5 rules share each
alert name, told apart by severity/env/instance matchers), and 0.2% match on open regexes only
(``alertname=~"Alert12[0-9]*"``), which no index can serve, so they are candidates for every
alert. Alerts are drawn from the same label space: most match a rule, some match none. For each alert we time:

- ``decide``: ``RuleSet.matching_rules`` (the index: which rules match);
- ``match``:  ``RuleSet.match`` (decide + first-match/continue + render params/target + validate);
- ``naive``:  every rule's matchers tried in order, as without an index.

``match`` runs right after ``decide`` for the same alert, so its regex matchers answer from their
per-matcher result cache, as they do for the repeats Alertmanager sends; ``decide`` is the cold figure.

The index makes the cost proportional to the candidates (rules under the alert's alertname plus
the regex-only rules), not to the number of rules; the output prints the mean candidate count.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.alerts.matchers import parse_matcher_list
from service.playbooks.loading import playbook_from_source
from service.playbooks.templating import TemplateEngine
from service.rules.rule import Rule
from service.rules.ruleset import Alert, LoadedRule, RuleSet

PLAYBOOK = b"""\
name: bench
params:
  instance: {pattern: "[a-z0-9.:-]+"}
steps:
  - {type: exec, argv: ["true", "{{ params.instance }}"]}
"""
RULES_PER_NAME = 5
REGEX_ONLY_SHARE = 0.002
SEVERITIES = ["critical", "warning", "page", "info"]
ENVS = ["prod", "staging", "dev"]


def build(n_rules: int, rng: random.Random) -> tuple[RuleSet, int]:
    engine = TemplateEngine()
    playbook = playbook_from_source(PLAYBOOK, "bench.yaml", engine)
    names = max(1, n_rules // RULES_PER_NAME)
    loaded: list[LoadedRule] = []
    for position in range(n_rules):
        if rng.random() < REGEX_ONLY_SHARE:
            k = rng.randrange(names)
            match = [f'alertname=~"Alert{k}[0-9]*"', f'job=~"job-{k % 50}.*"']
        else:
            match = [f'alertname="Alert{position % names}"']
            variant = position // names
            if variant % 2 == 0:
                match.append('severity=~"critical|page"')
            if variant % 3 == 1:
                match.append('env!="dev"')
            if variant % 4 == 3:
                match.append(f'instance=~"node-{position % 10}[0-9]*:9000"')
        rule = Rule.model_validate(
            {
                "name": f"r{position}",
                "match": match,
                "playbook": "bench",
                "params": {"instance": "{{ labels.instance }}"},
            }
        )
        matchers = tuple(parse_matcher_list(rule.match))
        loaded.append(LoadedRule(rule, "bench", position + 1, position, matchers, f"v{position}"))
    return RuleSet.build(loaded, {"bench": playbook}, engine), names


def alerts(count: int, names: int, rng: random.Random) -> list[Alert]:
    out = []
    for _ in range(count):
        # 10% of alerts carry a name no rule knows.
        name = f"Alert{rng.randrange(names)}" if rng.random() < 0.9 else f"Unknown{rng.randrange(1000)}"
        labels = {
            "alertname": name,
            "severity": rng.choice(SEVERITIES),
            "env": rng.choice(ENVS),
            "instance": f"node-{rng.randrange(100)}:9000",
            "job": f"job-{rng.randrange(60)}",
            "cluster": "lab",
        }
        out.append(Alert(labels))
    return out


def naive(ruleset: RuleSet, alert: Alert) -> list[LoadedRule]:
    return [r for r in ruleset.rules if r.rule.enabled and r.accepts(alert.status, alert.labels)]


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def run(n_rules: int, n_alerts: int, seed: int) -> None:
    rng = random.Random(seed)
    started = time.perf_counter()
    ruleset, names = build(n_rules, rng)
    built = time.perf_counter() - started
    batch = alerts(n_alerts, names, rng)
    naive_batch = batch[: max(20, n_alerts * 10_000 // n_rules // 10)]

    decide, match, linear = [], [], []
    candidates = 0
    for i, alert in enumerate(batch):
        t0 = time.perf_counter_ns()
        found = ruleset.matching_rules(alert)
        t1 = time.perf_counter_ns()
        ruleset.match(alert)
        t2 = time.perf_counter_ns()
        decide.append(t1 - t0)
        match.append(t2 - t1)
        candidates += ruleset.candidate_count(alert.labels)
        if i < len(naive_batch):
            t3 = time.perf_counter_ns()
            expected = naive(ruleset, alert)
            linear.append(time.perf_counter_ns() - t3)
            assert [r.name for r in expected] == [r.name for r in found], "index and scan disagree"

    d, m, n = median_us(decide), median_us(match), median_us(linear)
    print(
        f"{n_rules:>7} rules (built in {built:.1f}s): median per alert  decide {d:8.1f} us  "
        f"match+render {m:8.1f} us  naive scan {n:10.1f} us  -> index is {n / d:,.0f}x faster  "
        f"(p99 decide {statistics.quantiles(decide, n=100)[98] / 1000:.1f} us, "
        f"{candidates / len(batch):.1f} candidates/alert, {len(batch)} alerts, {len(linear)} scanned)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    for n in args.rules:
        run(n, args.alerts, args.seed)


if __name__ == "__main__":
    main()
