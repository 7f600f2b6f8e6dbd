"""Builders of tiny corpus trees with each corpus' real layout and metadata format (used by the recipe tests in
tests/data/ and the prepare tests in tests/unit/). Audio is short tones so the trees build in milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(path: Path, seconds: float = 1.0, sr: int = 16000, freq: float = 440.0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format=fmt)
    return path


def librispeech(root: Path) -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "SPEAKERS.TXT").write_text("; ID |SEX| SUBSET | MINUTES | NAME\n19 | F | train-clean-100 | 25.19 | Kara\n"
                                       "84 | M | dev-clean | 8.02 | Christie\n")
    ch = root / "train-clean-100/19/198"
    (ch / "19-198.trans.txt").parent.mkdir(parents=True)
    (ch / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK WAS FINISHED\n")
    tone(ch / "19-198-0000.flac", freq=300)
    tone(ch / "19-198-0001.flac", freq=310)
    dev = root / "dev-clean/84/121123"
    dev.mkdir(parents=True)
    (dev / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n")
    tone(dev / "84-121123-0000.flac", freq=320)
    return root


def vctk(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "speaker-info.txt").write_text("ID  AGE  GENDER  ACCENTS  REGION  COMMENTS\n"
                                           "p225  23  F    English    Southern  England\n"
                                           "p226  22  M    Scottish   Edinburgh\n")
    for i, (spk, utt, text) in enumerate([("p225", "001", "Please call Stella."), ("p226", "002", "Ask her.")]):
        (root / f"txt/{spk}").mkdir(parents=True, exist_ok=True)
        (root / f"txt/{spk}/{spk}_{utt}.txt").write_text(text + "\n")
        for mic in ("mic1", "mic2"):
            tone(root / f"wav48_silence_trimmed/{spk}/{spk}_{utt}_{mic}.flac", sr=48000, freq=200 + 50 * i + len(mic))
    return root


def crema_d(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
                                                "1002,21,Female,Caucasian,Not Hispanic\n")
    tone(root / "AudioWAV/1001_DFA_ANG_XX.wav", freq=250)
    tone(root / "AudioWAV/1002_IEO_HAP_HI.wav", freq=260)
    tone(root / "AudioWAV/1002_BAD_NAME.wav", freq=270)
    return root


def esc50(root: Path) -> Path:
    (root / "meta").mkdir(parents=True)
    (root / "meta/esc50.csv").write_text("filename,fold,target,category,esc10,src_file,take\n"
                                         "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
                                         "5-200032-A-40.wav,5,40,helicopter,False,200032,A\n"
                                         "4-300000-A-10.wav,4\n")
    tone(root / "audio/1-100032-A-0.wav", seconds=5, sr=44100, freq=500)
    tone(root / "audio/5-200032-A-40.wav", seconds=5, sr=44100, freq=90)
    return root


def clotho(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "clotho_captions_development.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
        'Distorted AM Radio noise.wav,"A radio hisses, with static.",Static on a radio,b,c,d\n')
    (root / "clotho_captions_evaluation.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\nrain.wav,Rain on a roof.,x,y,z,w\n")
    tone(root / "development/Distorted AM Radio noise.wav", seconds=2, sr=44100, freq=700)
    tone(root / "evaluation/rain.wav", seconds=2, sr=44100, freq=710)
    return root


def musiccaps(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "musiccaps-public.csv").write_text(
        "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,"
        "is_audioset_eval\n"
        "-0Gj8-vB1q4,30,40,\"['/m/0140xf']\",\"['low quality', 'sustained strings melody']\","
        "\"The low quality recording features a ballad song.\",4,False,True\n"
        "-0SdAVK79lg,30,40,\"['/m/0155w']\",\"['guitar', 'slow tempo']\",\"A calm guitar song.\",0,False,False\n"
        "-missing000,0,10,\"[]\",\"['piano']\",\"Piano.\",1,False,False\n"
        "-badaspects,0,10,\"[]\",\"not a list(\",\"Broken.\",1,False,False\n")
    tone(root / "audio/-0Gj8-vB1q4.wav", seconds=3, sr=48000, freq=330)
    tone(root / "audio/-0SdAVK79lg.wav", seconds=3, sr=48000, freq=340)
    return root


def _write_truncated(path: Path) -> None:
    tone(path, seconds=1.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def bad_inputs(root: Path) -> Path:
    """A `manifest`-kind corpus mixing 3 valid clips with every kind of bad input (see prepare's quarantine)."""
    root.mkdir(parents=True, exist_ok=True)
    tone(root / "good1.wav", freq=300)
    tone(root / "good2.flac", freq=400, sr=44100)
    tone(root / "good3.wav", freq=500, sr=22050)
    (root / "dup.wav").write_bytes((root / "good1.wav").read_bytes())
    (root / "unreadable.wav").write_bytes(b"this is not audio at all" * 10)
    _write_truncated(root / "truncated.wav")
    (root / "zero.wav").write_bytes(b"")
    sf.write(root / "noframes.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(root / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(root / "clipped.wav", np.sign(np.sin(np.arange(16000) / 5.0)).astype(np.float32), 16000)
    nan = np.full(16000, 0.1, dtype=np.float32)
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, 16000, subtype="FLOAT")
    tone(root / "wrong_rate.wav", sr=12345)
    tone(root / "long.wav", seconds=4.0)
    rows = [{"file": f, "domain": "speech", "transcript": f"clip {f}"} for f in (
        "good1.wav", "good2.flac", "good3.wav", "dup.wav", "unreadable.wav", "truncated.wav", "zero.wav",
        "noframes.wav", "silent.wav", "clipped.wav", "nan.wav", "wrong_rate.wav", "long.wav", "absent.wav")]
    lines = [json.dumps(r) for r in rows] + ['{"file": "oops.wav", "domain": ', json.dumps({"file": "x.wav",
                                                                                             "colour": "red"})]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


