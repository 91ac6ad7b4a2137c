"""The tiny model of a family for tests that run on every family."""

import pytest

import interp


def tiny_family(request, family: str):
    """The session tiny model of `family` (conftest), or one built here for families it lacks."""
    from interp.model.tiny import FAMILIES

    if family not in FAMILIES:
        pytest.skip(f"interp.tiny has no {family!r} family yet")
    try:
        return request.getfixturevalue(f"tiny_{family}")
    except pytest.FixtureLookupError:
        return interp.tiny(family, seed=0)
