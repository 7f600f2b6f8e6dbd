"""The offline demo corpus: speech (eSpeak NG), labelled sounds, labelled music and mixtures, with exact ground truth.

Built by `desta prepare` for a source of `kind: demo` under `<paths.raw>/<source name>/` (once; reused while its
`.complete.json` matches the settings). Layout:
    <name>/speech/speech_00000.wav ... sound/ music/ mixture/   16 kHz mono PCM-16 wav
    <name>/metadata.jsonl   one JSON object per clip: {"file": "speech/speech_00000.wav", "domain", "split", ...}
    <name>/.complete.json   {"version", "n_clips", "seed", "clips"}: written last; its presence means complete
Held-out items (split valid / test) use sentences and voices that never occur in train, so evaluation measures
generalisation rather than memory. Deterministic for a seed: same settings -> byte-identical clips, in any process
at any time (the voices avoid eSpeak's breathy variants, whose noise differs from run to run; desta.data.tts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

from desta.data import synth
from desta.data.audio import resample
from desta.data.tts import speak

VERSION = 4  # 2: held-out voices balanced for gender x language; 3: no breathy (non-reproducible) voice variants;
# 4: every train accent/language spoken by both genders, 10 test voices (5 women, 5 men) instead of 6
SAMPLE_RATE = 16000
KIND_SHARES = (("speech", 0.45), ("sound", 0.15), ("music", 0.15), ("mixture", 0.25))


@dataclass(frozen=True)
class Voice:
    espeak: str
    gender: str
    accent: str
    language: str


def _v(spec: str) -> Voice:
    name, gender, accent, language = spec.split("|")
    return Voice(name, gender, accent, language)


# Train voices and held-out voices are disjoint (different eSpeak variants and/or accents). No breathy variant
# (+f2, +f3, +f5, whisper, ...): their noise depends on the clock, so the corpus would not be byte-reproducible.
# Every train accent and language is spoken by a woman and a man, so neither gives the gender away (version 3 had
# French, Spanish and Caribbean English from men only, German and New York English from women only).
TRAIN_VOICES = [_v(s) for s in (
    "en-us+m1|Male|American|English", "en-us+Annie|Female|American|English", "en+m3|Male|British|English",
    "en+belinda|Female|British|English", "en-gb-scotland+m4|Male|Scottish|English",
    "en-gb-scotland+aunty|Female|Scottish|English", "en-029+m2|Male|Caribbean|English",
    "en-029+anika|Female|Caribbean|English", "en-us-nyc+m3|Male|New York|English",
    "en-us-nyc+f4|Female|New York|English", "fr+m2|Male|French|French", "fr+Annie|Female|French|French",
    "de+m4|Male|German|German", "de+f4|Female|German|German", "es+m1|Male|Spanish|Spanish",
    "es+belinda|Female|Spanish|Spanish")]
# Each held-out split has both genders in English and in another language, so no cue but the voice itself (not the
# language, which the transcription and the audio both reveal) tells the gender. (Version 1 had every test-split
# woman speak French or Spanish and every test-split man English.) The held-out voices use eSpeak variants that no
# train voice uses; the test split has 10 voices, so per-speaker tests can reach p = 1/252 (version 3: 6, p >= 0.05).
HELDOUT_VOICES = {
    "valid": [_v(s) for s in (
        "en-us+linda|Female|American|English", "en+m5|Male|British|English", "de+grandma|Female|German|German",
        "fr+m5|Male|French|French")],
    "test": [_v(s) for s in (
        "en-gb-scotland+steph|Female|Scottish|English", "en-029+f1|Female|Caribbean|English",
        "en-us+steph2|Female|American|English", "es+steph3|Female|Spanish|Spanish", "fr+Andrea|Female|French|French",
        "en-us+m6|Male|American|English", "en-029+m7|Male|Caribbean|English", "en+m8|Male|British|English",
        "es+m7|Male|Spanish|Spanish", "de+m6|Male|German|German")],
}

SUBJECTS = ("The old fisherman", "My younger sister", "A tall stranger", "The school teacher", "Our new neighbour",
            "The tired doctor", "A young pilot", "The quiet librarian", "My best friend", "The city mayor",
            "A curious child", "The train driver", "Her grandmother", "The famous painter", "A busy waiter",
            "The night guard", "His little brother", "The local baker", "A brave firefighter", "The museum guide")
PREDICATES = ("left the keys on the kitchen table", "walked to the station before sunrise",
              "forgot to close the garden gate", "bought fresh bread at the market", "lost an umbrella in the rain",
              "painted the fence bright green", "wrote a long letter to the council", "missed the last bus home",
              "found a strange coin in the sand", "cooked soup for the whole street", "fixed the broken bicycle",
              "read the newspaper twice this morning", "planted tomatoes behind the house",
              "called the office about the delay", "carried a heavy box up the stairs",
              "watched the storm from the window",
              "sold the old car last winter", "learned to play the violin", "counted the boats in the harbour",
              "opened a small shop near the bridge")
OTHER_SENTENCES = {
    "French": ("Le chat dort sur le canapé.", "Nous partons demain matin.", "Il fait très beau aujourd'hui.",
               "Elle lit un livre dans le jardin.", "Le train arrive à huit heures.", "Je voudrais un café, merci."),
    "German": ("Der Hund spielt im Garten.", "Wir fahren morgen nach Berlin.", "Das Wetter ist heute schön.",
               "Sie trinkt gern heißen Tee.", "Der Zug kommt um acht Uhr.", "Ich habe das Buch gelesen."),
    "Spanish": ("El perro duerme en la casa.", "Mañana vamos a la playa.", "Hace mucho calor hoy.",
                "Ella compra pan en el mercado.", "El tren llega a las ocho.", "Me gusta mucho la música."),
}
RATES = {"Slow": 125, "Normal": 175, "Fast": 245}  # words per minute
PITCHES = {"Low": 20, "Normal": 50, "High": 75, "Very high": 95}  # eSpeak pitch 0..100, relative to the voice
VOLUMES = {"Low": 0.08, "Normal": 0.3, "High": 0.8}  # peak level of the speech
TEMPOS = {"Slow": (70, 90), "Moderate": (100, 120), "Fast": (130, 160)}
SNRS = (0.0, 5.0, 10.0, 20.0)
SOUND_CAPTIONS = {"siren": "an emergency siren wailing", "alarm beeps": "a high-pitched alarm beeping",
                  "clock ticking": "a clock ticking steadily", "engine hum": "an engine humming at low speed",
                  "rain": "rain falling steadily", "bird chirps": "birds chirping"}


def _split_counts(n: int, valid_fraction: float, test_fraction: float) -> dict[str, int]:
    n_test, n_valid = round(n * test_fraction), round(n * valid_fraction)
    return {"train": n - n_test - n_valid, "valid": n_valid, "test": n_test}


def sentence_pools(seed: int, valid_fraction: float, test_fraction: float) -> dict[str, dict[str, list[str]]]:
    """language -> split -> sentences; the three pools are disjoint, so held-out transcripts are never trained on."""
    rng = np.random.default_rng([seed, 11])
    pools: dict[str, dict[str, list[str]]] = {}
    english = [f"{s} {p}." for s in SUBJECTS for p in PREDICATES]
    for language, sentences in (("English", english), *OTHER_SENTENCES.items()):
        order = [sentences[i] for i in rng.permutation(len(sentences))]
        counts = _split_counts(len(order), max(valid_fraction, 1 / len(order)), max(test_fraction, 1 / len(order)))
        pools[language] = {"train": order[:counts["train"]], "valid": order[counts["train"]:-counts["test"]],
                           "test": order[-counts["test"]:]}
    return pools


def plan(n_clips: int, seed: int, valid_fraction: float = 0.1, test_fraction: float = 0.15) -> list[dict[str, Any]]:
    """The corpus as a list of item specs (pure, cheap): what every clip will contain, with its split."""
    pools = sentence_pools(seed, valid_fraction, test_fraction)
    voices = {"train": TRAIN_VOICES, **HELDOUT_VOICES}
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    n_kinds = {k: max(1, round(n_clips * share)) for k, share in KIND_SHARES}
    n_kinds["speech"] += n_clips - sum(n_kinds.values())
    for kind, count in n_kinds.items():
        index = 0
        for split, n in _split_counts(count, valid_fraction, test_fraction).items():
            for _ in range(n):
                rng = np.random.default_rng([seed, len(items)])
                spec = {"kind": kind, "file": f"{kind}/{kind}_{index:05d}.wav", "split": split,
                        "seed": [seed, len(items)]}
                spec.update(_describe(kind, split, rng, voices, pools))
                while _key(spec) in seen:  # identical settings would give identical audio: draw again
                    spec.update(_describe(kind, split, rng, voices, pools))
                seen.add(_key(spec))
                items.append(spec)
                index += 1
    return items


def _key(spec: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in spec.items() if k not in ("file", "seed")}, sort_keys=True, default=str)


def _describe(kind: str, split: str, rng: np.random.Generator, voices: dict[str, list[Voice]],
              pools: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    if kind in ("speech", "mixture"):
        pool = voices[split] if kind == "speech" else [v for v in voices[split] if v.language == "English"]
        voice = pool[rng.integers(len(pool))]
        sentences = pools[voice.language][split]
        spec = {"voice": voice.__dict__, "transcript": sentences[rng.integers(len(sentences))],
                "speaking_speed": rng.choice(list(RATES), p=[0.25, 0.5, 0.25]),
                "pitch": rng.choice(list(PITCHES), p=[0.25, 0.4, 0.25, 0.1]),
                "volume": rng.choice(list(VOLUMES), p=[0.25, 0.5, 0.25])}
        if kind == "mixture":
            spec.update(background=synth.SOUND_CLASSES[rng.integers(len(synth.SOUND_CLASSES))],
                        snr_db=float(SNRS[rng.integers(len(SNRS))]), reverb=bool(rng.random() < 0.5))
        return spec
    if kind == "sound":
        return {"label": synth.SOUND_CLASSES[rng.integers(len(synth.SOUND_CLASSES))],
                "seconds": round(float(rng.uniform(2.5, 6.0)), 2)}
    mode = ("major", "minor")[rng.integers(2)]
    tempo_label = list(TEMPOS)[rng.integers(len(TEMPOS))]
    tempo_bpm = float(rng.integers(*TEMPOS[tempo_label]))
    n_bars = min(4, max(2, int(9.0 // (240.0 / tempo_bpm))))  # keep clips under ~9 s
    progression = synth.PROGRESSIONS[mode][rng.integers(len(synth.PROGRESSIONS[mode]))][:n_bars]
    return {"instrument": synth.INSTRUMENTS[rng.integers(len(synth.INSTRUMENTS))], "mode": mode,
            "key": synth.KEYS[rng.integers(len(synth.KEYS))], "tempo_label": tempo_label,
            "tempo_bpm": tempo_bpm, "progression": list(progression)}


def _speech(spec: dict[str, Any]) -> np.ndarray:
    voice = spec["voice"]
    wave, sr = speak(spec["transcript"], voice=voice["espeak"], rate_wpm=RATES[spec["speaking_speed"]],
                     pitch=PITCHES[spec["pitch"]])
    wave = resample(wave, sr, SAMPLE_RATE)
    return (wave * (VOLUMES[spec["volume"]] / max(float(np.abs(wave).max()), 1e-6))).astype(np.float32)


def _speech_fields(spec: dict[str, Any]) -> dict[str, Any]:
    voice = spec["voice"]
    return {"transcript": spec["transcript"], "language": voice["language"], "gender": voice["gender"],
            "accent": voice["accent"], "pitch": spec["pitch"], "speaking_speed": spec["speaking_speed"],
            "volume": spec["volume"], "speaker": f"espeak:{voice['espeak']}"}


def render(spec: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """One item spec -> (`[t]` float32 wave at 16 kHz, its metadata: the manifest fields it fills)."""
    rng = np.random.default_rng(spec["seed"])
    kind = spec["kind"]
    if kind == "speech":
        return _speech(spec), {"domain": "speech", **_speech_fields(spec)}
    if kind == "sound":
        label = spec["label"]
        wave = synth.sound(label, spec["seconds"], SAMPLE_RATE, rng)
        return wave, {"domain": "sound", "sound_labels": [label], "caption": f"The sound of {SOUND_CAPTIONS[label]}."}
    if kind == "music":
        chords = synth.chord_names(spec["key"], spec["mode"], tuple(spec["progression"]))
        wave = synth.music(spec["instrument"], spec["tempo_bpm"], spec["key"], spec["mode"],
                           tuple(spec["progression"]), SAMPLE_RATE, rng)
        caption = (f"A {spec['tempo_label'].lower()} {spec['instrument']} piece in {spec['key']} {spec['mode']} at "
                   f"{spec['tempo_bpm']:.0f} BPM playing the chords {', '.join(chords)}.")
        return wave, {"domain": "music", "music_instrument": spec["instrument"], "music_key": spec["key"],
                      "music_mode": spec["mode"], "music_tempo_bpm": spec["tempo_bpm"], "music_chords": chords,
                      "caption": caption, "attributes": {"Tempo": spec["tempo_label"]}}
    speech = _speech(spec)
    background = synth.sound(spec["background"], speech.size / SAMPLE_RATE, SAMPLE_RATE, rng)
    wave = synth.mix_at_snr(speech, background, spec["snr_db"])
    if spec["reverb"]:
        wave = synth.reverberate(wave, SAMPLE_RATE, rng)
    who = "A woman" if spec["voice"]["gender"] == "Female" else "A man"
    room = " in a reverberant room" if spec["reverb"] else ""
    caption = f"{who} speaking{room} with {SOUND_CAPTIONS[spec['background']]} in the background."
    return wave, {"domain": "speech", **_speech_fields(spec), "sound_labels": [spec["background"], "speech"],
                  "background": spec["background"], "snr_db": spec["snr_db"], "reverb": spec["reverb"],
                  "caption": caption}


def _render_to(args: tuple[dict[str, Any], str]) -> dict[str, Any]:
    spec, root = args
    wave, meta = render(spec)
    path = Path(root) / spec["file"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.wav")
    sf.write(tmp, wave, SAMPLE_RATE, subtype="PCM_16")
    tmp.replace(path)
    return {"file": spec["file"], "split": spec["split"], **meta}


def _stamp(n_clips: int, seed: int, valid_fraction: float, test_fraction: float) -> dict[str, Any]:
    return {"version": VERSION, "n_clips": n_clips, "seed": seed, "valid_fraction": valid_fraction,
            "test_fraction": test_fraction}


def is_complete(root: str | Path, stamp: dict[str, Any]) -> bool:
    marker = Path(root) / ".complete.json"
    if not marker.is_file():
        return False
    done = json.loads(marker.read_text())
    return {k: done.get(k) for k in stamp} == stamp and (Path(root) / "metadata.jsonl").is_file()


def build(root: str | Path, n_clips: int = 300, seed: int = 0, valid_fraction: float = 0.1,
          test_fraction: float = 0.15, workers: int = 1, progress: bool = True) -> Path:
    """Render the corpus into `root` (skipped when `.complete.json` matches these settings). Returns the metadata
    file. Workers are processes (eSpeak is single-threaded global state)."""
    root = Path(root)
    stamp = _stamp(n_clips, seed, valid_fraction, test_fraction)
    if is_complete(root, stamp):
        return root / "metadata.jsonl"
    (root / ".complete.json").unlink(missing_ok=True)
    specs = plan(n_clips, seed, valid_fraction, test_fraction)
    jobs = [(s, str(root)) for s in specs]
    bar = tqdm(total=len(jobs), desc=f"demo corpus -> {root}", unit="clip", disable=not progress)
    rows: list[dict[str, Any]] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for row in pool.map(_render_to, jobs, chunksize=8):
                rows.append(row)
                bar.update()
    else:
        for job in jobs:
            rows.append(_render_to(job))
            bar.update()
    bar.close()
    tmp = root / "metadata.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(root / "metadata.jsonl")
    (root / ".complete.json").write_text(json.dumps({**stamp, "clips": len(rows)}))
    return root / "metadata.jsonl"


def read_metadata(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for every line of a metadata.jsonl; a malformed line names the file and the line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg}); fix or delete that line") from None
            if not isinstance(row, dict) or "file" not in row:
                raise ValueError(f"{path}:{lineno}: each line must be a JSON object with a \"file\" key")
            yield lineno, row
