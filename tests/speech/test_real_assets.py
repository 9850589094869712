"""Real bundled assets: the converted Whisper tiny.en transcribes real Asterisk prompts (slow:
fetches and converts the assets on first use)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def task():
    from omnitune.core.base.recipe import RegularizationConfig
    from omnitune.speech.asr import SpeechDataConfig, SpeechModelConfig, SpeechRecognitionTask

    return SpeechRecognitionTask(model=SpeechModelConfig(name="asset:whisper-tiny.en", max_new_tokens=48),
                                 data=SpeechDataConfig(source="asset:asterisk-prompts"),
                                 regularization=RegularizationConfig(), seed=0)


def test_asterisk_asset_layout():
    from omnitune.core.base.assets import resolve

    folder = Path(resolve("asset:asterisk-prompts"))
    assert len(list(folder.rglob("*.wav"))) == 568
    lines = (folder / "transcripts.txt").read_text().splitlines()
    assert "agent-pass: Please enter your password followed by the pound key." in lines


@pytest.mark.parametrize("clip, expected", [
    ("agent-pass", "Please enter your password followed by the pound key."),
    ("vm-goodbye", "Goodbye."),
    ("digits/7", "seven"),
])
def test_converted_tiny_en_transcribes_real_clips(task, clip, expected):
    from omnitune.core.base.assets import resolve

    model = task.build_model().eval()
    wav = Path(resolve("asset:asterisk-prompts")) / f"{clip}.wav"
    [out] = task.predict(model, [str(wav)])
    # Greedy decoding; compared after the declared normaliser (punctuation, "7" vs "seven").
    assert task.normalize(out["text"]) == task.normalize(expected), out["text"]
