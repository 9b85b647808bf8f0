"""Shared fixtures: a fixed random state, one math thread, and the offline corpus mirror."""

import os
import sys
from pathlib import Path

import pytest
import torch

# Make `import oracle` / `from conftest import MIRROR` work from the test files.
sys.path.insert(0, os.path.dirname(__file__))

from transformer_lib import data, utils  # noqa: E402

# The offline copies of the corpora, beside the repository (see ../shared/data/README.md).
MIRROR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test models are tiny: one thread is fastest, and two threads spin-waiting on a busy
    2-core machine (two pytest workers) are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """Corpora come from the shared mirror into a private cache, and the network is off."""
    if not MIRROR.is_dir():
        pytest.fail(f"the offline corpus mirror {MIRROR} is missing (it sits beside the repository as shared/data)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(utils.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        mp.setenv(data.MIRROR_ENV, str(MIRROR))
        mp.setattr(data.urllib.request, "urlopen", lambda *a, **k: pytest.fail("tests must not use the network"))
        yield
