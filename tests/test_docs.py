"""The README documents every setting the bot reads, as `registry-bot settings --markdown` prints it."""

from __future__ import annotations

from pathlib import Path

from bot.config import setting_fields
from tests.conftest import run_cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    missing = [f.name.upper() for f in setting_fields() if f.name != "images" and f"`{f.name.upper()}`" not in README]
    assert missing == []


def test_the_readme_table_is_what_the_command_prints():
    table = run_cli("settings", "--markdown").stdout.strip()
    assert table in README, "regenerate the table: registry-bot settings --markdown"
