"""Importers for the real public formats; each exposes ``load(path, *, kind) -> ImportResult``.

Whole-file problems (unreadable file, missing columns) raise :class:`~eyeops.errors.DataError`
naming the file and field; row problems are quarantined with file, row, field and reason.
"""

from eyeops.data.importers import alpaca_dialogue, llava_json, mcq, odir

__all__ = ["BENCHMARKS", "alpaca_dialogue", "llava_json", "mcq", "odir"]

# Benchmark layouts as published: source name -> module whose ``load(path, *, kind, filter)`` also
# takes a subject/keyword filter and counts what it filtered out.
BENCHMARKS = {
    "medmcqa": "eyeops.data.importers.medmcqa",
    "pubmedqa": "eyeops.data.importers.pubmedqa",
    "medquad": "eyeops.data.importers.medquad",
    "vqa_rad": "eyeops.data.importers.vqa",
    "slake": "eyeops.data.importers.vqa",
    "omnimedvqa": "eyeops.data.importers.mcq_variants",
    "ophtimus_eval": "eyeops.data.importers.mcq_variants",
    "flashcards": "eyeops.data.importers.meadow",
    "wikidoc": "eyeops.data.importers.meadow",
}
