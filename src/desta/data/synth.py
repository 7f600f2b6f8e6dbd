"""Procedural audio with known ground truth for the offline demo corpus (built by `desta prepare`, kind: demo).

Environmental sounds of labelled classes, music with labelled instrument / tempo / key / mode / chords, and
speech-over-background mixtures at a labelled SNR with optional reverberation. Pure numpy; every function takes a
`numpy.random.Generator` so a seed fixes the output. All waves are `[t]` float32 at `sr`.
"""

from __future__ import annotations

import numpy as np

SOUND_CLASSES = ("siren", "alarm beeps", "clock ticking", "engine hum", "rain", "bird chirps")
INSTRUMENTS = ("piano", "organ", "flute", "violin", "guitar")
KEYS = ("C", "D", "E", "F", "G", "A", "B-flat")
NOTE_SEMITONES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B-flat": 10}
NOTE_NAMES = ("C", "C#", "D", "E-flat", "E", "F", "F#", "G", "A-flat", "A", "B-flat", "B")
# Progressions as scale degrees (0-based) per mode; chord quality follows the diatonic triad of that degree.
PROGRESSIONS = {"major": [(0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4)],
                "minor": [(0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4)]}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}


def _t(seconds: float, sr: int) -> np.ndarray:
    return np.arange(int(round(seconds * sr)), dtype=np.float64) / sr


def _normalize(wave: np.ndarray, peak: float) -> np.ndarray:
    m = float(np.abs(wave).max()) or 1.0
    return (wave * (peak / m)).astype(np.float32)


def _lowpass(noise: np.ndarray, alpha: float) -> np.ndarray:
    """One-pole low-pass (alpha in (0, 1); smaller = darker)."""
    from scipy.signal import lfilter

    return lfilter([alpha], [1.0, alpha - 1.0], noise)


def sound(label: str, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One labelled environmental sound (a class from SOUND_CLASSES), peak-normalised to a random level."""
    t = _t(seconds, sr)
    if label == "siren":  # two-tone wail: carrier swept by a slow sine
        rate = rng.uniform(0.3, 0.8)
        f = 700 + 350 * np.sin(2 * np.pi * rate * t)
        wave = np.sin(2 * np.pi * np.cumsum(f) / sr) + 0.3 * np.sin(4 * np.pi * np.cumsum(f) / sr)
    elif label == "alarm beeps":  # square-gated high tone
        f, period = rng.uniform(2000, 3200), rng.uniform(0.25, 0.5)
        gate = (np.mod(t, period) < period / 2).astype(np.float64)
        wave = np.sign(np.sin(2 * np.pi * f * t)) * gate * 0.6
    elif label == "clock ticking":  # short decaying clicks once per second, alternating tick/tock
        wave = np.zeros_like(t)
        click = np.exp(-np.arange(int(0.01 * sr)) / (0.0015 * sr)) * rng.standard_normal(int(0.01 * sr))
        for i, start in enumerate(np.arange(rng.uniform(0, 0.5), seconds - 0.02, 1.0)):
            s = int(start * sr)
            wave[s:s + click.size] += click * (1.0 if i % 2 == 0 else 0.7)
    elif label == "engine hum":  # low harmonic drone with slow rpm wobble and rumble
        f0 = rng.uniform(35, 60) * (1 + 0.03 * np.sin(2 * np.pi * 0.5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        wave = sum(np.sin(k * phase) / k for k in range(1, 8)) + 0.3 * _lowpass(rng.standard_normal(t.size), 0.05)
    elif label == "rain":  # filtered noise bed with random droplets
        wave = _lowpass(rng.standard_normal(t.size), 0.4) * 0.5
        drops = rng.random(t.size) < 40 / sr
        wave += np.convolve(drops * rng.uniform(0.5, 1.5, t.size), np.exp(-np.arange(80) / 10.0), mode="same")
    elif label == "bird chirps":  # fast downward frequency sweeps in bursts
        wave = np.zeros_like(t)
        for start in np.sort(rng.uniform(0, seconds - 0.2, int(seconds * 3))):
            n = int(rng.uniform(0.06, 0.12) * sr)
            tt = np.arange(n) / sr
            f = rng.uniform(3000, 4500) - 15000 * tt
            chirp = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.hanning(n)
            s = int(start * sr)
            wave[s:s + n] += chirp[: wave.size - s]
    else:
        raise ValueError(f"unknown sound class {label!r}; known: {', '.join(SOUND_CLASSES)}")
    return _normalize(wave, rng.uniform(0.3, 0.8))


def _tone(instrument: str, freq: float, dur: float, sr: int) -> np.ndarray:
    """One note of a synthetic instrument (its timbre = harmonic recipe + envelope)."""
    t = _t(dur, sr)
    if instrument == "piano":
        wave = sum(np.sin(2 * np.pi * k * freq * t) * np.exp(-t * (2.5 + k)) / k for k in range(1, 7))
    elif instrument == "organ":
        wave = sum(np.sin(2 * np.pi * k * freq * t) * a for k, a in ((1, 1.0), (2, 0.6), (4, 0.4), (8, 0.2)))
        wave = wave * np.minimum(1.0, t / 0.02) * np.minimum(1.0, (dur - t) / 0.03 + 1e-3)
    elif instrument == "flute":
        vib = 1 + 0.004 * np.sin(2 * np.pi * 5 * t)
        wave = np.sin(2 * np.pi * freq * np.cumsum(vib) / sr) + 0.1 * np.sin(4 * np.pi * freq * t)
        wave = wave * np.minimum(1.0, t / 0.08) * np.minimum(1.0, (dur - t) / 0.05 + 1e-3)
    elif instrument == "violin":  # band-limited sawtooth with vibrato
        phase = 2 * np.pi * freq * np.cumsum(1 + 0.006 * np.sin(2 * np.pi * 6 * t)) / sr
        wave = sum(np.sin(k * phase) / k for k in range(1, 12)) * np.minimum(1.0, t / 0.1)
    elif instrument == "guitar":  # plucked: bright attack, fast decay of upper harmonics
        wave = sum(np.sin(2 * np.pi * k * freq * t) * np.exp(-t * (1.5 + 2 * k)) / k**0.8 for k in range(1, 10))
    else:
        raise ValueError(f"unknown instrument {instrument!r}; known: {', '.join(INSTRUMENTS)}")
    return wave


def chord_names(key: str, mode: str, progression: tuple[int, ...]) -> list[str]:
    """Scale degrees -> chord symbols in `key` (e.g. C major (0, 4, 5, 3) -> ["C", "G", "Am", "F"])."""
    scale, root = SCALES[mode], NOTE_SEMITONES[key]
    names = []
    for degree in progression:
        third = (scale[(degree + 2) % 7] - scale[degree]) % 12
        fifth = (scale[(degree + 4) % 7] - scale[degree]) % 12
        suffix = "" if third == 4 else ("dim" if fifth == 6 else "m")
        names.append(NOTE_NAMES[(root + scale[degree]) % 12] + suffix)
    return names


def music(instrument: str, tempo_bpm: float, key: str, mode: str, progression: tuple[int, ...], sr: int,
          rng: np.random.Generator) -> np.ndarray:
    """Block chords (one per bar of 4 beats) plus an arpeggio on every beat, in `key` `mode` at `tempo_bpm`."""
    beat = 60.0 / tempo_bpm
    scale, root = SCALES[mode], NOTE_SEMITONES[key]
    out = []
    for degree in progression:
        notes = [root + scale[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]
        freqs = [261.63 * 2 ** ((n - 12) / 12) for n in notes]  # chord one octave below middle C
        bar = sum(_tone(instrument, f, 4 * beat, sr) for f in freqs) * 0.5
        for b in range(4):
            arp = _tone(instrument, 2 * freqs[b % 3], beat, sr)
            s = int(b * beat * sr)
            bar[s:s + arp.size] += arp[: bar.size - s] * 0.6
        out.append(bar)
    return _normalize(np.concatenate(out), rng.uniform(0.4, 0.8))


def reverberate(wave: np.ndarray, sr: int, rng: np.random.Generator, rt60: float = 0.6) -> np.ndarray:
    """Convolve with a synthetic room response (exponentially decaying noise, `rt60` seconds)."""
    from scipy.signal import fftconvolve

    n = int(rt60 * sr)
    ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
    ir[0] = 1.0
    wet = fftconvolve(wave, ir)[: wave.size]
    return _normalize(wet, float(np.abs(wave).max()))


def mix_at_snr(speech: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """Speech plus background scaled so that 10*log10(P_speech / P_background) == snr_db; background is looped
    or cut to the speech length. Result peak-limited to 0.9 (both parts scaled together, SNR unchanged)."""
    reps = int(np.ceil(speech.size / background.size))
    bg = np.tile(background, reps)[: speech.size].astype(np.float64)
    p_s, p_b = np.mean(speech.astype(np.float64) ** 2), np.mean(bg**2) + 1e-12
    mixed = speech + bg * np.sqrt(p_s / (p_b * 10 ** (snr_db / 10)))
    peak = float(np.abs(mixed).max())
    return (mixed * (0.9 / peak if peak > 0.9 else 1.0)).astype(np.float32)
