import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/media.py

# A Ray cluster started by a test listens on 127.0.0.1 only (read when ray is imported;
# never set in the package: a real cluster needs the routable address), without the
# token file a shared cluster would want in the home folder.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def media(tmp_path):
    """A folder for made media inside the test's tmp dir."""
    d = tmp_path / "videos"
    d.mkdir()
    return d
