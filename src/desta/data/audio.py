"""Audio decoding for every stage: any wav/flac/ogg/mp3 at any rate and channel count -> float32 mono 16 kHz.

No torchaudio: soundfile (libsndfile, incl. MP3) decodes, soxr resamples. Errors name the file and the fix.
A path may also be an s3:// URI: the object is fetched with the S3 client ingestion uses (desta.data.remote).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

TARGET_SR = 16000


class AudioError(ValueError):
    """An audio file cannot be used; `reason` is a short machine-readable code (for quarantine reports)."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {detail}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def probe(path: str | Path) -> AudioInfo:
    """Header-only read (cheap): sample rate, channels, frames."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "missing", "file not found; check the path (relative paths are resolved from the "
                                          "current directory)")
    try:
        info = sf.info(str(path))
    except Exception as err:  # libsndfile's errors are RuntimeError/LibsndfileError
        raise AudioError(path, "unreadable", f"cannot decode audio ({err}); supported: wav, flac, ogg, mp3") from None
    return AudioInfo(int(info.samplerate), int(info.channels), int(info.frames))


def to_mono(wave: np.ndarray) -> np.ndarray:
    """[t, c] or [t] -> [t] (channel mean)."""
    return wave.mean(axis=1) if wave.ndim == 2 else wave


def resample(wave: np.ndarray, sr: int, target_sr: int = TARGET_SR) -> np.ndarray:
    if sr == target_sr:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave.astype(np.float32, copy=False), sr, target_sr).astype(np.float32, copy=False)


def is_uri(path: str | Path) -> bool:
    """An s3:// object rather than a local file (pass URIs as str: Path() would fold the double slash)."""
    return isinstance(path, str) and path.startswith("s3://")


def load_audio(path: str | Path, target_sr: int = TARGET_SR) -> np.ndarray:
    """Decode, downmix and resample to `[t]` float32 at `target_sr`. `path` is a local file or an s3:// URI.
    Raises AudioError (missing, unreadable, empty, nan) with the file name and what to do."""
    if is_uri(path):
        source: str | io.BytesIO = io.BytesIO(fetch_object(path))
    else:
        path = Path(path)
        probe(path)
        source = str(path)
    try:
        wave, sr = sf.read(source, dtype="float32", always_2d=False)
    except Exception as err:
        raise AudioError(path, "unreadable", f"cannot decode audio ({err}); the file may be truncated or corrupt; "
                                             "re-export it as wav/flac") from None
    if wave.size == 0:
        raise AudioError(path, "empty", "the file holds no audio samples (zero length); remove it or re-record it")
    if not np.isfinite(wave).all():
        raise AudioError(path, "nan", "the audio contains NaN/Inf samples; re-export it")
    return resample(to_mono(wave), int(sr), target_sr)


def fetch_object(uri: str) -> bytes:
    """Bytes of an s3:// object through this process's S3 client, retried with the process's `io:` policy
    (desta.data.remote.io_policy); a missing object or bucket is AudioError "missing", an endpoint that stays away
    or refuses "unreadable", both naming the URI."""
    from desta.data.remote import io_policy, read_uri
    from desta.io_retry import EndpointError

    try:
        return read_uri(uri, io_policy())
    except FileNotFoundError:
        raise AudioError(uri, "missing", "no such object in the bucket; check the URI, or upload it (endpoint from "
                                         "$AWS_ENDPOINT_URL)") from None
    except EndpointError as err:
        raise AudioError(uri, "unreadable", f"cannot fetch the object ({err})") from None
