"""One settings object: every BAKEHOUSE_* variable is read by repo_store.settings, and the README's
table says what the class says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from repo_store.settings import Settings, SettingsError, get_settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_MODULE = ROOT / "repo_store" / "settings.py"
SDK = [ROOT / "bakehouse" / "client.py", *(ROOT / "bakehouse" / "_sdk").glob("*.py")]  # reads its own two


def _environment_reads(path: Path) -> list[tuple[int, str]]:
    """(line, variable) of every BAKEHOUSE_* variable the module reads from the environment:
    `os.environ.get(...)`, `os.getenv(...)`, `os.environ[...]`, and typer's `envvar=`."""
    reads = []

    def named(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("BAKEHOUSE_"):
            return node.value
        return None

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            function = ast.unparse(node.func)
            if function.endswith(("environ.get", "getenv", "environ.setdefault")) and node.args and (name := named(node.args[0])):
                reads.append((node.lineno, name))
            reads += [(node.lineno, name) for k in node.keywords if k.arg == "envvar" and (name := named(k.value))]
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and ast.unparse(node.value).endswith("environ")
              and (name := named(node.slice))):
            reads.append((node.lineno, name))
    return reads


def test_no_module_reads_a_bakehouse_variable_but_the_settings():
    sources = [p for layer in ("targets", "repo_store", "flows", "bakehouse") for p in (ROOT / layer).rglob("*.py")]
    assert len(sources) > 40
    found = {f"{p.relative_to(ROOT)}:{line} {name}" for p in sources if p != SETTINGS_MODULE and p not in SDK
             for line, name in _environment_reads(p)}
    assert not found, "read these through repo_store.settings.get_settings()"


def test_the_environment_read_finder_finds_reads():  # so the test above cannot pass by finding nothing
    reads = _environment_reads(SDK[0]) + [r for p in SDK[1:] for r in _environment_reads(p)]
    assert {name for _, name in reads} == {"BAKEHOUSE_BASE_URL", "BAKEHOUSE_API_KEY"}


def test_the_readme_table_lists_every_setting_with_its_default():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Settings"):]
    section = section[:section.index("\n## ", 1)]
    rows = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^\| `BAKEHOUSE_([A-Z_]+)` \| ([^|]+) \|", section, re.M)}
    assert set(rows) == set(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is not None and default is not False and default != "":
            assert str(default) in rows[name], name


def test_settings_follow_the_environment_and_name_a_bad_value(monkeypatch):
    monkeypatch.setenv("BAKEHOUSE_LEASE_SECONDS", "7")
    assert get_settings().lease_seconds == 7.0
    monkeypatch.setenv("BAKEHOUSE_LEASE_SECONDS", "")  # empty is unset
    assert get_settings().lease_seconds == 60.0
    monkeypatch.setenv("BAKEHOUSE_LEASE_SECONDS", "soon")
    with pytest.raises(SettingsError, match="BAKEHOUSE_LEASE_SECONDS"):
        get_settings()
    monkeypatch.setenv("BAKEHOUSE_LEASE_SECONDS", "60")
    monkeypatch.setenv("BAKEHOUSE_SERVE_CHECKPOINTS", "both")
    with pytest.raises(SettingsError, match="BAKEHOUSE_SERVE_CHECKPOINTS"):
        get_settings()
