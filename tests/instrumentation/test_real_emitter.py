"""instrument() with the real Emitter and KillSwitchView (no daemon running: fail open)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

import costwatch
from costwatch.instrumentation import instrument, uninstrument
from costwatch.protocol import KillSwitch, KillSwitchState
from costwatch.settings import ClientSettings
from tests.fakes.provider import TEXT, FakeProvider

pytest.importorskip("costwatch.instrumentation.emitter")


def test_real_emitter_and_killswitch(fake_provider: FakeProvider, tmp_path: Path) -> None:
    from costwatch.instrumentation import _emitter_for_tests

    settings = ClientSettings(app="real", url="http://127.0.0.1:9", state_dir=tmp_path)
    instrument(settings)
    try:
        emitter = _emitter_for_tests()
        c = openai.OpenAI(base_url=fake_provider.openai_url, api_key="k", max_retries=2)
        assert c.chat.completions.create(model="gpt-4o", messages=[]).choices[0].message.content == TEXT
        emitter.killswitch.update(KillSwitchState(engaged=[KillSwitch(id="g", reason="stop")], version=1))
        with pytest.raises(costwatch.KillSwitchEngaged) as info:
            c.chat.completions.create(model="gpt-4o", messages=[])
        assert isinstance(info.value, openai.OpenAIError)
        assert fake_provider.count == 1
    finally:
        uninstrument(timeout=0.5)
