"""Seed descriptions: the paper's format per domain, stable attribute order and value spelling."""

from desta.data.manifest import Clip
from desta.describe import format_timestamp, has_speech_text, normalise_value, seed_description


def _clip(**kw) -> Clip:
    base = dict(id="c/1", audio="a.wav", duration=2.0, sample_rate=16000, channels=1, source="c", domain="speech")
    return Clip(**{**base, **kw})


def test_speech_matches_paper_example():
    clip = _clip(transcript="Excuse me?", emotion="neutral", gender="female", pitch="very high", volume="low",
                 speaking_speed="very slow", duration=2.2)
    assert seed_description(clip) == ("[00:00-00:03] Excuse me? (Emotion: Neutral, Gender: Female, Pitch: Very high, "
                                      "Volume: Low, Speaking speed: Very slow, Duration: 2s)")


def test_value_spelling_is_normalised_and_order_fixed():
    a = _clip(transcript="  Hello   there ", gender="MALE", emotion="Happy", accent="new_zealand")
    b = _clip(transcript="Hello there", emotion="happy ", gender="male", accent="new zealand")
    assert seed_description(a) == seed_description(b)
    assert seed_description(a) == ("[00:00-00:02] Hello there (Emotion: Happy, Gender: Male, Accent: new zealand, "
                                   "Duration: 2s)")


def test_speech_without_transcript_gets_attributes_only():
    clip = _clip(duration=5.0, attributes={"Number of speakers": 0})
    assert seed_description(clip) == "[00:00-00:05] (Number of speakers: 0, Duration: 5s)"
    assert not has_speech_text(clip)


def test_sound_clip():
    clip = _clip(domain="sound", duration=4.6, sound_labels=["dog_bark", "rain"], caption="A dog barks in the rain.")
    assert seed_description(clip) == ("[00:00-00:05] (Sound: Dog bark, Rain, Caption: A dog barks in the rain., "
                                      "Duration: 5s)")


def test_music_clip():
    clip = _clip(domain="music", duration=10.0, music_genre="jazz", music_instrument="piano", music_key="C#",
                 music_mode="minor", music_tempo_bpm=119.6, music_chords=["C#m", "A", "E"])
    assert seed_description(clip) == ("[00:00-00:10] (Genre: Jazz, Instrument: Piano, Key: C#, Mode: Minor, "
                                      "Tempo: 120 bpm, Chords: C#m - A - E, Duration: 10s)")


def test_speech_mixture_lists_background_and_snr():
    clip = _clip(transcript="Hi.", gender="female", background="rain", snr_db=9.6, reverb=True)
    assert seed_description(clip).endswith("(Gender: Female, Background: Rain, SNR: 10 dB, Reverb: Yes, Duration: 2s)")


def test_multi_segment_has_one_line_per_segment_sorted():
    segs = [{"start": 3.2, "end": 5.0, "text": "Fine, thanks.", "speaker": "B", "gender": "male", "emotion": None},
            {"start": 0.0, "end": 2.5, "text": "How are you?", "speaker": "A", "gender": "female", "emotion": "happy"}]
    lines = seed_description(_clip(duration=5.0, segments=segs)).split("\n")
    assert lines == ["[00:00-00:03] How are you? (Speaker: A, Emotion: Happy, Gender: Female)",
                     "[00:03-00:05] Fine, thanks. (Speaker: B, Gender: Male)",
                     "[00:00-00:05] (Duration: 5s)"]
    assert has_speech_text(_clip(segments=segs))


def test_timestamps_and_values():
    assert format_timestamp(0) == "00:00" and format_timestamp(75.9) == "01:15" and format_timestamp(3725) == "01:02:05"
    assert normalise_value("Age", 23.0) == "23" and normalise_value("Gender", "  ") is None
    assert seed_description(_clip(duration=0.6)).endswith("(Duration: 0.6s)")


def test_recited_description_is_stripped_from_responses():
    from desta.describe import strip_description_echo

    recited = ("[00:03-00:03] Her grandmother counted the boats. (Gender: Female, Accent: British, Pitch: Normal, "
               "Volume: Low, Speaking speed: Normal, Caption: A woman speaking wi")
    assert strip_description_echo(recited) == "Her grandmother counted the boats."
    assert strip_description_echo("Hello (Emotion: Happy, Duration: 2s) there.") == "Hello there."
    untouched = "The speaker (a woman) sounds calm: 3 out of 5."
    assert strip_description_echo(untouched) == untouched
