"""Offline text-to-speech with eSpeak NG (the `espeakng_loader` wheel's libespeak-ng, through ctypes).

Used by the demo corpus (`desta prepare` with a `kind: demo` source) and by tests that need real speech:
    wave, sr = speak("Hello there.", voice="en-us+f4", rate_wpm=150, pitch=70)

libespeak-ng keeps global state (one voice, one callback), so every call holds a process-wide lock; use worker
processes, not threads, for parallel synthesis. Output is bit-identical for equal arguments, within a process and
across processes, except with the breathy variants (those whose `!v` file sets `breath`: +f2, +f3, +f5, +whisper,
+Alicia, ...): their noise depends on the clock (measured 2026-11-26: processes started in different seconds differ,
max |difference| 0.004-0.09 of full scale; reseeding libc's rand() does not help). Non-breathy female variants:
+f1, +f4, +Annie, +belinda, +linda, +steph, +steph2, +steph3, +Andrea, +anika, +aunty, +grandma
(tests/unit/test_data_demo.py checks every demo voice across processes).
"""

from __future__ import annotations

import _ctypes
import ctypes
import os
import threading

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_VOLUME, ESPEAK_PITCH, ESPEAK_RANGE = 1, 2, 3, 4
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
EE_OK = 0
RATE_WPM_RANGE = (80, 450)  # eSpeak NG's supported speaking rates (words per minute)

VOICE_ALIASES = {"en-gb": "en", "fr-fr": "fr", "de-de": "de", "es-es": "es"}  # common codes -> eSpeak file names
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()


class TTSError(RuntimeError):
    """eSpeak NG refused a request; the message names the setting and what to use instead."""


class _Voice(ctypes.Structure):
    """espeak_VOICE from speak_lib.h (used for voice selection by language + gender + variant)."""

    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


def _open() -> tuple[ctypes.CDLL, bytes]:
    """dlopen libespeak-ng afresh. The library keeps synthesis state in C statics (pitch-flutter phase, noise
    generator) that espeak_Terminate does not reset; unloading it after every utterance (`_close`) is what makes
    equal requests give bit-identical audio. A load + init + unload costs about 1 ms."""
    try:
        import espeakng_loader
    except ImportError as err:
        raise TTSError("the `espeakng-loader` package is missing; install it with `pip install espeakng-loader`") \
            from err
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    data_dir = os.path.dirname(espeakng_loader.get_data_path()).encode()  # the folder that holds espeak-ng-data
    return lib, data_dir


def _close(lib: ctypes.CDLL) -> None:
    lib.espeak_Terminate()
    _ctypes.dlclose(lib._handle)


def _set_voice(lib: ctypes.CDLL, voice: str, gender: str | None, variant: int) -> None:
    """`voice` is an eSpeak name such as "en-us", "en-gb", "fr" or "en-us+f3"; with `gender` ("female"/"male")
    the voice is chosen by properties (language + gender + variant number) instead."""
    base, plus, var = voice.partition("+")
    voice = VOICE_ALIASES.get(base.lower(), base) + plus + var
    if gender is None:
        if lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
            raise TTSError(f"unknown eSpeak voice {voice!r}; use a language code (en-us, en-gb, en-gb-scotland, fr, "
                           "de, es) optionally with a variant (+f1..+f5, +m1..+m7)")
        return
    codes = {"male": 1, "female": 2}
    if gender not in codes:
        raise TTSError(f"gender must be 'male' or 'female', got {gender!r}")
    spec = _Voice(name=None, languages=voice.encode(), identifier=None, gender=codes[gender], age=0,
                  variant=variant)
    if lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) != EE_OK:
        raise TTSError(f"no eSpeak voice for language {voice!r} with gender {gender!r}; use a language code such "
                       "as en-us")


def _synthesize(lib: ctypes.CDLL, data_dir: bytes, callback: object, text: str, voice: str, gender: str | None,
                variant: int, settings: tuple[tuple[int, int], ...]) -> int:
    """Initialise, select the voice, apply (parameter, value) settings and synthesize; returns the sample rate."""
    sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir, 0)
    if sample_rate <= 0:
        raise TTSError(f"espeak_Initialize failed (returned {sample_rate}) with data at {data_dir.decode()}; "
                       "reinstall espeakng-loader")
    lib.espeak_SetSynthCallback(callback)
    _set_voice(lib, voice, gender, variant)
    for param, value in settings:
        lib.espeak_SetParameter(param, int(value), 0)
    data = text.encode("utf-8") + b"\0"
    status = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
    if status != EE_OK:
        raise TTSError(f"espeak_Synth failed with status {status} for text {text[:40]!r}")
    lib.espeak_Synchronize()
    return sample_rate


def speak(text: str, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50, amplitude: int = 100,
          pitch_range: int = 50, gender: str | None = None, variant: int = 0) -> tuple[np.ndarray, int]:
    """Synthesize `text` -> (`[t]` float32 mono in [-1, 1], sample rate (22050)).

    rate_wpm: words per minute (80..450); pitch, pitch_range: 0..100 (50 = voice default); amplitude: 0..200
    (100 = normal). `gender`/`variant` pick a voice by properties rather than by name (see `_set_voice`).
    """
    if not text.strip():
        raise TTSError("speak() got empty text; pass at least one word")
    if not RATE_WPM_RANGE[0] <= rate_wpm <= RATE_WPM_RANGE[1]:
        raise TTSError(f"rate_wpm={rate_wpm} is outside eSpeak's range {RATE_WPM_RANGE}")
    for name, value, top in (("pitch", pitch, 100), ("pitch_range", pitch_range, 100), ("amplitude", amplitude, 200)):
        if not 0 <= value <= top:
            raise TTSError(f"{name}={value} must be within 0..{top}")
    samples: list[np.ndarray] = []

    def collect(wav, n, _events) -> int:
        if wav and n > 0:
            samples.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    callback = _CALLBACK(collect)  # must outlive the synthesis: the library holds only its address
    with _LOCK:
        lib, data_dir = _open()
        try:
            sample_rate = _synthesize(lib, data_dir, callback, text, voice, gender, variant,
                                      ((ESPEAK_RATE, rate_wpm), (ESPEAK_PITCH, pitch), (ESPEAK_RANGE, pitch_range),
                                       (ESPEAK_VOLUME, amplitude)))
        finally:
            _close(lib)
    pcm = np.concatenate(samples) if samples else np.zeros(0, dtype=np.int16)
    if pcm.size == 0:
        raise TTSError(f"eSpeak produced no audio for {text[:40]!r} with voice {voice!r}")
    return (pcm.astype(np.float32) / 32768.0), sample_rate
