"""Pieces several model families share (see :mod:`eyeops.models`)."""
