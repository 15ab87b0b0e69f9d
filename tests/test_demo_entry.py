"""`remediator demo` imports the checkout's demo/ package only when run, and says clearly when there is none."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_help_comes_from_the_demo_package() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "demo", "--help"], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: remediator demo [-h] [--ports-base PORT] [--keep]")


def test_demo_outside_a_checkout_says_what_it_needs(tmp_path: Path) -> None:
    """The service package installed on its own (no demo/, rules/, alertmanager/ beside it)."""
    shutil.copytree(ROOT / "service", tmp_path / "service", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "demo"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "the demo needs a checkout of the repository" in result.stderr
    assert "Traceback" not in result.stderr


def test_other_commands_do_not_import_the_demo() -> None:
    code = "import sys; import service.cli; sys.exit('demo' in sys.modules or 'demo.stack' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60, cwd="/").returncode == 0
