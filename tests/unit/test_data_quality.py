"""The audio quality gate: each check fires on its own defect and passes good audio. Run: pytest
tests/unit/test_data_quality.py"""

import io

import numpy as np
import pytest
import soundfile as sf
from params_util import default_params

from desta.data.audio import AudioError
from desta.data.quality import check_audio, wav_truncated

QUALITY = default_params().prepare.quality

def _wav(wave, sr=16000, subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.asarray(wave, dtype=np.float32), sr, format="WAV", subtype=subtype)
    return buf.getvalue()


GOOD = 0.3 * np.sin(np.arange(32000) / 7.0)


def test_good_audio_passes_and_is_resampled():
    checked, wave = check_audio(_wav(GOOD, 44100), "x.wav", QUALITY)
    assert checked.sample_rate == 44100 and checked.channels == 1 and wave.size == pytest.approx(32000 * 16 / 44.1,
                                                                                                  abs=2)
    assert len(checked.content_hash) == 64 and -15 < checked.rms_dbfs < -10


@pytest.mark.parametrize("data, reason", [
    (_wav(GOOD)[:2000], "truncated"), (b"", "empty"), (b"garbage" * 20, "unreadable"),
    (_wav(np.zeros(16000)), "silent"), (_wav(np.sign(GOOD)), "clipped"), (_wav(GOOD[:1000]), "too_short"),
    (_wav(np.tile(GOOD, 40)), "too_long"), (_wav(GOOD, 12345), "wrong_rate"),
    (_wav(np.where(np.arange(GOOD.size) == 5, np.nan, GOOD), subtype="FLOAT"), "nan")])
def test_each_defect_has_its_reason(data, reason):
    with pytest.raises(AudioError) as err:
        check_audio(data, "clip.wav", QUALITY.model_copy(update={"max_duration_s": 30}))
    assert err.value.reason == reason and "clip.wav" in str(err.value)


def test_wav_truncated_reads_the_header_only():
    data = _wav(GOOD)
    assert not wav_truncated(data) and wav_truncated(data[:-10]) and not wav_truncated(b"fLaC....")
