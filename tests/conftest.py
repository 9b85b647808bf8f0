import os
import sys

import pytest
import torch

# Make `import oracle` work from the test files.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    yield
