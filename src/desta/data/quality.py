"""Audio quality gate of `desta prepare`: decode + resample + checks; a failing file is quarantined with a reason.

Reasons (stable codes, counted in summary.json and listed in quarantine.jsonl): unreadable, truncated, empty,
too_short, too_long, wrong_rate, nan, silent, clipped (plus duplicate and bad_metadata, decided by prepare).
Thresholds come from `prepare.quality` in params.yaml.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from desta.config import QualityConfig
from desta.data.audio import AudioError, resample, to_mono


@dataclass(frozen=True)
class Checked:
    """A clip that passed: its file properties, content hash and RMS level (dBFS)."""

    sample_rate: int
    channels: int
    duration: float
    content_hash: str
    rms_dbfs: float


def wav_truncated(data: bytes) -> bool:
    """True when a RIFF/WAVE file's `data` chunk declares more bytes than the file holds (cut-off download/copy).
    libsndfile silently reads what is there, so this must be checked on the header."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return False
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if chunk == b"data":
            return size != 0xFFFFFFFF and pos + 8 + size > len(data)
        pos += 8 + size + (size & 1)
    return True  # no data chunk before the end of the file


def mp3_frame_count_declared(data: bytes) -> bool:
    """True when an MP3 carries a Xing/Info header (LAME and libsndfile write one): its frame count is exact, so
    decoding fewer frames means the file was cut. Without one the count is an estimate from the file size."""
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:  # ID3v2 tag: syncsafe size, optional footer
        start = 10 + (data[6] << 21 | data[7] << 14 | data[8] << 7 | data[9]) + (10 if data[5] & 0x10 else 0)
    head = data[start:start + 200]
    return head[:1] == b"\xff" and (b"Xing" in head or b"Info" in head)


def _decode(data: bytes, name: str) -> tuple[np.ndarray, int, int]:
    if not data:
        raise AudioError(name, "empty", "the file is zero bytes long; re-download or remove it")
    if wav_truncated(data):
        raise AudioError(name, "truncated", "the WAV header announces more audio than the file holds (cut-off "
                                            "copy or download); re-download it")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            declared, fmt, sr = f.frames, f.format, f.samplerate
            wave = f.read(dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises LibsndfileError / RuntimeError / TypeError
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the file", str(err))  # no address: reruns match
        raise AudioError(name, "unreadable", f"cannot decode audio ({reason}); supported: wav, flac, ogg, mp3; the "
                                             "file may be corrupt or truncated") from None
    if fmt == "MP3" and wave.shape[0] < declared and mp3_frame_count_declared(data):
        raise AudioError(name, "truncated", f"the MP3 header announces {declared} samples but only {wave.shape[0]} "
                                            "decode (cut-off copy or download); re-download it")
    return wave, int(sr), int(wave.shape[1])


def check_audio(data: bytes, name: str, cfg: QualityConfig, target_sr: int = 16000) -> tuple[Checked, np.ndarray]:
    """Decode `data` (the file's bytes) and apply every check; returns (properties, `[t]` float32 at target_sr).
    Raises AudioError(name, reason, detail) for a file that must be quarantined."""
    wave, sr, channels = _decode(data, name)
    frames = wave.shape[0]
    if frames == 0:
        raise AudioError(name, "empty", "the file holds no audio samples (zero length); remove it or re-record it")
    if sr not in cfg.allowed_sample_rates:
        raise AudioError(name, "wrong_rate", f"sample rate {sr} Hz is not in prepare.quality.allowed_sample_rates "
                                             f"{cfg.allowed_sample_rates}; resample the file or allow the rate")
    duration = frames / sr
    if duration < cfg.min_duration_s:
        raise AudioError(name, "too_short", f"{duration:.3f} s is below prepare.quality.min_duration_s "
                                            f"({cfg.min_duration_s} s)")
    if duration > cfg.max_duration_s:
        raise AudioError(name, "too_long", f"{duration:.1f} s exceeds prepare.quality.max_duration_s "
                                           f"({cfg.max_duration_s} s); segment the file or raise the limit")
    if not np.isfinite(wave).all():
        raise AudioError(name, "nan", "the audio contains NaN/Inf samples; re-export it")
    mono = to_mono(wave)
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    rms_db = 20 * np.log10(rms) if rms > 0 else -np.inf
    if rms_db < cfg.silence_rms_dbfs:
        raise AudioError(name, "silent", f"RMS level {rms_db:.1f} dBFS is below prepare.quality.silence_rms_dbfs "
                                         f"({cfg.silence_rms_dbfs} dBFS): the clip is silent")
    clipped = float(np.mean(np.abs(wave) >= 0.999))
    if clipped > cfg.clipped_fraction:
        raise AudioError(name, "clipped", f"{clipped:.1%} of samples are at full scale (limit "
                                          f"prepare.quality.clipped_fraction={cfg.clipped_fraction}): clipped")
    checked = Checked(sr, channels, duration, hashlib.sha256(data).hexdigest(), round(rms_db, 2))
    return checked, resample(mono, sr, target_sr)
