"""Fixtures the API-grammar tests share: a 2-layer tiny SD and culture units found on it."""

from __future__ import annotations

import pytest

import circuits
import interp
from colour import PAIRS_BOX_HAT


@pytest.fixture(scope="module")
def text_model() -> interp.Model:
    return interp.tiny("sd", text_layers=2)


@pytest.fixture(scope="module")
def units(text_model):
    # a random model has no real culture units: a lax noun filter keeps the top 2 for the machinery
    return circuits.culture_units(text_model, 1, PAIRS_BOX_HAT, k=2, rho=100.0)
