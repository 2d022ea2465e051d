"""The README documents every setting the bot reads, as `registry-bot settings --markdown` prints it."""

from __future__ import annotations

from pathlib import Path

from bot.config import setting_fields
from tests.conftest import run_cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    listed = [f.name.upper() for f in setting_fields() if f.name not in ("images", "registries")]
    missing = [name for name in listed if f"`{name}`" not in README]
    assert missing == []


def test_the_readme_table_is_what_the_command_prints():
    tables = run_cli("settings", "--markdown").stdout.strip().split("\n\n")
    assert len(tables) == 2  # the settings, then the keys of a `registries:` entry
    for table in tables:
        assert table in README, "regenerate the table: registry-bot settings --markdown"
