"""The README's first screen holds exactly two set-up commands, and CI runs the second one."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _first_screen_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ")[0]          # the first screen: everything before the first section
    assert len(head.splitlines()) <= 30
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", head, flags=re.S)]


def test_two_setup_commands():
    cmds = _first_screen_commands()
    assert len(cmds) == 2
    assert cmds[0].endswith("edgead demo") and "pip install" in cmds[0]
    assert "pytest" in cmds[1] and "pip install" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _first_screen_commands()[1] in ci
