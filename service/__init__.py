"""Beamline Remediator: Alertmanager webhooks in, verified runbook playbooks out."""

__version__ = "0.1.0"
