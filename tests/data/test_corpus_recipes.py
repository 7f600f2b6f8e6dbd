"""Each corpus recipe on a fixture tree with the corpus' real layout and metadata format.
Run: pytest tests/data/test_corpus_recipes.py"""

from pathlib import Path

import fixtures
import pytest

from desta.config import SourceConfig
from desta.data.corpora import RecipeError, recipe_for
from desta.data.remote import LocalTree


def _entries(kind: str, root: Path, **options):
    source = SourceConfig(name=kind, kind=kind, path=str(root), options=options)
    recipe = recipe_for(kind)
    tree = LocalTree(root)
    recipe.check(source, tree)
    found = list(recipe.entries(source, tree, root))
    return [e for e in found if "bad" not in e.extra], [e for e in found if "bad" in e.extra]


def test_librispeech_transcripts_official_splits_and_gender(tmp_path):
    good, bad = _entries("librispeech", fixtures.librispeech(tmp_path / "LibriSpeech"))
    by_rel = {e.rel: e for e in good}
    e = by_rel["train-clean-100/19/198/19-198-0001.flac"]
    assert e.meta["transcript"] == "THIS LITTLE WORK WAS FINISHED" and e.meta["gender"] == "Female"
    assert e.meta["split"] == "train" and e.group == "19"
    assert by_rel["dev-clean/84/121123/84-121123-0000.flac"].meta == {
        "domain": "speech", "split": "valid", "transcript": "GO DO YOU HEAR", "language": "English",
        "speaker": "84", "gender": "Male"}
    assert not bad and all((tmp_path / "LibriSpeech" / r).is_file() for r in by_rel)


def test_vctk_accent_age_gender_and_mic_choice(tmp_path):
    root = fixtures.vctk(tmp_path / "VCTK")
    good, _ = _entries("vctk", root, mic="mic2")
    e = {x.meta["speaker"]: x for x in good}["p226"]
    assert e.rel == "wav48_silence_trimmed/p226/p226_002_mic2.flac" and (root / e.rel).is_file()
    assert (e.meta["gender"], e.meta["accent"], e.meta["age"], e.meta["transcript"]) == ("Male", "Scottish", "22",
                                                                                        "Ask her.")
    assert e.meta["attributes"] == {"Region": "Edinburgh"} and "split" not in e.meta


def test_crema_d_emotion_from_file_name_and_demographics(tmp_path):
    good, bad = _entries("crema_d", fixtures.crema_d(tmp_path / "CREMA-D"))
    e = {x.meta["speaker"]: x for x in good}["1002"]
    assert (e.meta["emotion"], e.meta["transcript"], e.meta["gender"], e.meta["age"]) == (
        "Happy", "It's eleven o'clock.", "Female", "21")
    assert e.meta["attributes"]["Emotion intensity"] == "High"
    assert len(bad) == 1 and "1002_BAD_NAME.wav" in bad[0].extra["bad"]


def test_esc50_labels_folds_and_malformed_row_names_line(tmp_path):
    good, bad = _entries("esc50", fixtures.esc50(tmp_path / "ESC-50"))
    assert [(e.meta["sound_labels"], e.meta["split"]) for e in good] == [(["dog"], "train"), (["helicopter"], "test")]
    assert len(bad) == 1 and bad[0].extra["bad"].split(": ")[0].endswith("meta/esc50.csv:4")


def test_clotho_captions_and_splits(tmp_path):
    good, _ = _entries("clotho", fixtures.clotho(tmp_path / "clotho"))
    assert [(e.rel, e.meta["split"], e.meta["caption"]) for e in good] == [
        ("development/Distorted AM Radio noise.wav", "train", "A radio hisses, with static."),
        ("evaluation/rain.wav", "test", "Rain on a roof.")]
    assert good[0].meta["attributes"]["Other captions"].startswith("Static on a radio")


def test_musiccaps_caption_aspects_eval_split_and_bad_aspects(tmp_path):
    good, bad = _entries("musiccaps", fixtures.musiccaps(tmp_path / "musiccaps"))
    assert good[0].meta["split"] == "test" and good[0].meta["attributes"]["Aspects"].startswith("low quality")
    assert "split" not in good[1].meta and good[1].meta["caption"] == "A calm guitar song."
    assert len(good) == 3 and len(bad) == 1 and "musiccaps-public.csv:5" in bad[0].extra["bad"]


@pytest.mark.parametrize("kind", ["librispeech", "vctk", "crema_d", "esc50", "clotho", "musiccaps", "manifest"])
def test_missing_layout_fails_before_work_saying_what_was_expected(tmp_path, kind):
    source = SourceConfig(name=kind, kind=kind, path=str(tmp_path))
    with pytest.raises(RecipeError, match="expected"):
        recipe_for(kind).check(source, LocalTree(tmp_path))


def test_missing_csv_column_names_the_file(tmp_path):
    root = fixtures.esc50(tmp_path / "ESC-50")
    (root / "meta/esc50.csv").write_text("filename,target\nx.wav,1\n")
    with pytest.raises(RecipeError, match=r"esc50.csv:1: header lacks column\(s\) \['fold', 'category'\]"):
        _entries("esc50", root)
