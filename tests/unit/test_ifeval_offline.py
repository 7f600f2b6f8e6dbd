"""The IFEval checkers run offline and deterministically: NLTK's punkt model comes from a package, never a download;
langdetect is seeded."""

from __future__ import annotations

import nltk
import pytest

from desta.evaluate import ifeval_checks
from desta.evaluate.official import punkt_data


def test_punkt_tab_written_from_the_package_is_what_nltk_loads(tmp_path, monkeypatch):
    out = punkt_data.write_punkt_tab(tmp_path)
    first = {f.name: f.read_bytes() for f in out.iterdir()}
    punkt_data.write_punkt_tab(tmp_path)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == first  # byte-identical on every run
    assert set(first) == {"abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab"}
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    from nltk.tokenize.punkt import PunktTokenizer

    text = "Dr. Smith met Mr. J. R. R. Tolkien at 5 p.m. on Jan. 3. They talked. Was it fun? Yes!"
    assert PunktTokenizer("english").tokenize(text) == [
        "Dr. Smith met Mr. J. R. R. Tolkien at 5 p.m. on Jan. 3.", "They talked.", "Was it fun?", "Yes!"]


def test_missing_punkt_names_the_offline_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(punkt_data.PunktMissingError, match=r"python -m desta\.evaluate\.official\.punkt_data"):
        punkt_data.require_punkt()


def test_word_and_sentence_counting_checkers_work_offline():
    ok = ifeval_checks.check("It rains. It pours. It stops.", ["length_constraints:number_sentences"],
                             [{"relation": "at least", "num_sentences": 3}])
    assert ok == [True]
    caps = ifeval_checks.check("THE SUN and THE MOON. NASA agrees.", ["change_case:capital_word_frequency"],
                               [{"capital_relation": "at least", "capital_frequency": 5}])
    assert caps == [True]  # THE SUN THE MOON NASA: nltk.word_tokenize with the packaged punkt model


def test_language_verdicts_are_seeded():
    ifeval_checks.registry()
    from langdetect import DetectorFactory, detect

    assert DetectorFactory.seed == ifeval_checks.LANGDETECT_SEED
    short = "Buenos dias amigo ok"  # unseeded, langdetect says es, pt or lt for this from one call to the next
    assert len({detect(short) for _ in range(20)}) == 1
