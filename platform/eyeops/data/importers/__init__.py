"""Importers for the real public formats; each exposes ``load(path, *, kind) -> ImportResult``.

Whole-file problems (unreadable file, missing columns) raise :class:`~eyeops.errors.DataError`
naming the file and field; row problems are quarantined with file, row, field and reason.
"""

from eyeops.data.importers import alpaca_dialogue, llava_json, mcq, odir

__all__ = ["alpaca_dialogue", "llava_json", "mcq", "odir"]
