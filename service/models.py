"""The one base of the pydantic models that read our YAML (settings, rules, rule tests, playbooks).

A typo in a config file is an error naming the field, never a key silently ignored (``extra="forbid"``),
and a loaded model is a value that nothing changes afterwards (``frozen=True``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
