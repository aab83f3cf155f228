"""The header deadline subclasses uvicorn's private H11Protocol. A uvicorn that
no longer has what it relies on must make ``gptclf serve`` refuse to start with a clear
message, never serve silently without the protection."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
import uvicorn.protocols.http.h11_impl as h11_impl  # noqa: E402

from gptclf.errors import GptclfError  # noqa: E402
from gptclf.inference.serve.http import check_header_protocol  # noqa: E402


def test_the_installed_uvicorn_has_what_the_deadline_needs() -> None:
    check_header_protocol()


def test_pyproject_bounds_uvicorn_to_the_tested_versions() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert text.count('"uvicorn>=0.29,<0.55"') == 2  # the serve extra and the test extra


class Renamed:  # a future uvicorn that renamed a hook the subclass overrides
    """self.cycle response_complete self.transport self.loop"""

    def connection_made(self, transport): ...  # noqa: ANN001, E704

    def data_received(self, data): ...  # noqa: ANN001, E704

    def connection_lost(self, exc): ...  # noqa: ANN001, E704

    def _on_response_done(self): ...  # noqa: E704


def test_serve_refuses_to_start_without_the_protection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gptclf.inference.serve.app import serve

    monkeypatch.setattr(h11_impl, "H11Protocol", Renamed)
    with pytest.raises(GptclfError, match="lacks on_response_complete"):
        check_header_protocol()
    # ...checked before anything else (the model directory here does not even exist).
    with pytest.raises(GptclfError, match="cannot protect against slow clients"):
        serve(tmp_path / "no-such-model", port=0)
