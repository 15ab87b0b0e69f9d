"""Alertmanager's language: the webhook body it posts and the label matchers it uses (leaves: no other
module of the service below them)."""
