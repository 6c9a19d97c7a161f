"""Settings come from SAVER_* variables, are validated, and may only tighten the schema's caps."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.schemas import MAX_TEXT_CHARS
from service.settings import Settings


def test_env_prefix_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAVER_PORT", "9001")
    monkeypatch.setenv("SAVER_ALLOW_LOOPBACK", "true")
    monkeypatch.setenv("SAVER_MNER_ARTIFACTS", "/models/mner")
    s = Settings()
    assert (s.port, s.allow_loopback, s.mner_artifacts) == (9001, True, Path("/models/mner"))


def test_safe_defaults() -> None:
    s = Settings()
    assert s.allow_loopback is False and s.fake_model is False
    assert s.max_text_chars == MAX_TEXT_CHARS and s.vision_budget_ms == 1500


def test_every_field_is_documented() -> None:
    assert all(field.description for field in Settings.model_fields.values())


@pytest.mark.parametrize("bad", [{"port": 0}, {"max_text_chars": MAX_TEXT_CHARS + 1}, {"workers": 0}])
def test_invalid_values_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)  # type: ignore[arg-type]
