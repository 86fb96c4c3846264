"""The server's model preparation in a child process: its answer, or its error, comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.preparation import ModelPreparationError, prepared_model


def test_the_prepared_folder_comes_back_from_the_child(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")  # an HF folder is used where it is
    assert asyncio.run(prepared_model(str(tmp_path), str(tmp_path / "cache"))) == tmp_path


def test_the_childs_error_is_raised_with_its_type_and_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelPreparationError, match=r"^FileNotFoundError: .*no-such-model"):
        asyncio.run(prepared_model(str(missing), str(tmp_path / "cache")))
