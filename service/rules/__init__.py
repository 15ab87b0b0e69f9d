"""Rules: Alertmanager matchers, the rule files, rule unit tests, explain."""
