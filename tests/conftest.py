import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny models run faster so, and tests running side by side don't fight)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_runtest_setup(item):
    """A test marked vision fails, never skips, where torchvision is missing: scripts/test.sh runs those tests in
    .venv-vision (bash scripts/setup.sh vision), and .venv deselects them with -m "not vision"."""
    if item.get_closest_marker("vision") is not None:
        try:
            import torchvision  # noqa: F401
        except ImportError as error:
            pytest.fail(f"{sys.executable} cannot import torchvision ({error}), which this test needs (Qwen2-VL's "
                        "processor): run it "
                        "with .venv-vision/bin/python -m pytest -m vision (bash scripts/setup.sh vision makes it), "
                        "or deselect it with -m 'not vision'", pytrace=False)


@pytest.fixture(scope="module")
def judge_server():
    """The loopback OpenAI/Anthropic-compatible judge server (tests/judge_server.py), one per test module."""
    from judge_server import JudgeServer

    server = JudgeServer().start()
    yield server
    server.stop()
