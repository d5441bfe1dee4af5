import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/media.py


@pytest.fixture
def media(tmp_path):
    """A folder for made media inside the test's tmp dir."""
    d = tmp_path / "videos"
    d.mkdir()
    return d
