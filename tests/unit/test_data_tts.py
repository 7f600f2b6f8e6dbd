"""eSpeak NG synthesis: real audio, deterministic, settings change the sound. Run: pytest tests/unit/test_data_tts.py"""

import numpy as np
import pytest

from desta.data.tts import TTSError, speak

TEXT = "The quick brown fox jumps over the lazy dog."


def test_speak_returns_real_mono_float_audio():
    wave, sr = speak(TEXT)
    assert sr == 22050
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 1.0 < wave.size / sr < 6.0
    assert 0.05 < np.abs(wave).max() <= 1.0


def test_speak_is_deterministic_across_calls_and_voices():
    # +f4: a non-breathy variant (breathy ones such as +f3 add clock-seeded noise; see desta.data.tts)
    first = speak(TEXT, voice="en-us+f4")[0]
    speak("Something else in between.", voice="fr")
    again = speak(TEXT, voice="en-us+f4")[0]
    assert np.array_equal(first, again)


def test_rate_pitch_and_volume_change_the_audio():
    base = speak(TEXT)[0]
    slow, fast = speak(TEXT, rate_wpm=110)[0], speak(TEXT, rate_wpm=300)[0]
    assert slow.size > base.size > fast.size
    quiet = speak(TEXT, amplitude=30)[0]
    assert np.sqrt(np.mean(quiet**2)) < 0.6 * np.sqrt(np.mean(base**2))
    assert not np.array_equal(speak(TEXT, pitch=90)[0][:base.size], base[:base.size])


def test_voices_accents_and_languages_differ():
    waves = {v: speak(TEXT, voice=v)[0] for v in ("en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-us+m3")}
    sigs = {v: (w.size, round(float(np.abs(w).mean()), 5)) for v, w in waves.items()}
    assert len(set(sigs.values())) == len(sigs)
    female = speak(TEXT, voice="en-us", gender="female", variant=1)[0]
    assert female.size > 0 and not np.array_equal(female[:waves["en-us"].size], waves["en-us"][:female.size])


@pytest.mark.parametrize("kwargs, word", [({"voice": "xx-nowhere"}, "unknown eSpeak voice"),
                                          ({"rate_wpm": 20}, "rate_wpm"), ({"pitch": 300}, "pitch"),
                                          ({"gender": "robot"}, "gender")])
def test_bad_settings_fail_with_a_named_setting(kwargs, word):
    with pytest.raises(TTSError, match=word):
        speak(TEXT, **kwargs)


def test_empty_text_is_refused():
    with pytest.raises(TTSError, match="empty text"):
        speak("   ")
