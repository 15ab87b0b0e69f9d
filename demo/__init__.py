"""A simulated Beamline Router and the T-OPS-04 runbook scripts, for demos and end-to-end tests."""
