"""NLTK's WordNet reader over Debian's ``wordnet-base`` files (METEOR's synonym matching).

NLTK cannot download its wordnet corpus here; Debian's package installs the WordNet 3.0 database
under /usr/share/wordnet, which NLTK's reader can read once it is given the ``lexnames`` file that
package omits. Without the files METEOR falls back to exact and stem matching.
"""

from __future__ import annotations

import io
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")

# WordNet 3.0 lexicographer files in id order: Debian's wordnet-base omits the `lexnames` file
# NLTK's reader opens first, so it is supplied from this fixed list (see lexnames(5WN)).
_LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_LEX_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


class _NoSynonyms:
    """A WordNet stand-in with no synsets: METEOR then matches exact words and stems only."""

    def synsets(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


@lru_cache(maxsize=1)
def wordnet() -> Any:
    """The WordNet reader, or a stand-in without synsets when the files are not installed."""
    if not (WORDNET_DIR / "data.noun").is_file():
        log.warning(
            "WordNet not found at %s: METEOR runs without synonym matching (apt-get install wordnet-base)",
            WORDNET_DIR,
        )
        return _NoSynonyms()
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    lexnames = "".join(
        f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)
    )

    class _DebianWordNet(WordNetCorpusReader):
        def open(self, file: str):  # type: ignore[override]
            if file == "lexnames" and not (WORDNET_DIR / "lexnames").is_file():
                return io.StringIO(lexnames)
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            # The WordNet→OMW mapping only serves multilingual lookups, which METEOR never makes;
            # computing it would need NLTK's own wordnet download.
            return None

    if str(WORDNET_DIR) not in nltk.data.path:
        nltk.data.path.append(str(WORDNET_DIR))  # NLTK only reads corpora under its data path
    return _DebianWordNet(str(WORDNET_DIR), None)


def uses_wordnet() -> bool:
    """True when WordNet synonyms are available (Debian wordnet-base installed)."""
    return not isinstance(wordnet(), _NoSynonyms)
