"""Escalation: telling a person, through the channels, once per incident."""
