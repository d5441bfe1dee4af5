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
def one_thread():
    """One PyTorch thread: the tests' models are tiny, and threads only fight over the
    shared cores (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def media(tmp_path):
    """A folder for made media inside the test's tmp dir."""
    d = tmp_path / "videos"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def loud_project(tmp_path_factory):
    """Made videos whose loudness follows arousal (see media.make_loud_media), with
    their Mel features extracted: c0-c9 of 200 frames, c10 of 12 and c11 of 20 frames
    (shorter than a window); annotations of all in all-annotations/."""
    import numpy as np
    from media import make_loud_media

    from vidaffect.commands.extract import extract

    root = tmp_path_factory.mktemp("loud")
    make_loud_media(root, 12, np.random.default_rng(0), n=[200] * 10 + [12, 20])
    assert extract([root / "videos"], store=root / "features", stages=["mel"], device="cpu").exit_code == 0
    return root
