"""Small realistic fixtures for the data-layer tests: fundus JPEGs with EXIF, written per test."""

from __future__ import annotations

import pytest
from eyeops_testing.fundus import write_fundus


@pytest.fixture
def fundus_writer():
    return write_fundus
