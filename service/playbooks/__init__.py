"""Playbooks: the runbook procedures as steps, their params and templates."""
