"""The README's settings table names every setting (the config reference stays true)."""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme() -> None:
    missing = [name for name in Settings.model_fields
               if f"`CRM_PULSE_{name.upper()}`" not in README]
    assert missing == []
