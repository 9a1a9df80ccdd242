import os

# The tests use tiny matrices, where BLAS threads only add synchronisation cost
# (and stall badly on a busy machine). Set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _unavailable(why):
    """Skip on a developer's machine; under CI (CI=true) fail, so a green CI means the oracle
    tests (real data, the COCO toolkit, Java) really ran."""
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true but {why}; CI must run the tests that need it")
    pytest.skip(why)


@pytest.fixture
def shared():
    """../shared beside the checkout: real COCO files and photographs."""
    if not SHARED.is_dir():
        _unavailable(f"real data not available: {SHARED} is absent")
    return SHARED


@pytest.fixture
def toolkit():
    """pycocoevalcap, the reference implementation of the COCO metrics (extra `meteor`)."""
    import importlib.util

    if importlib.util.find_spec("pycocoevalcap") is None:
        _unavailable("pycocoevalcap is not installed (pip install captioner[meteor])")


@pytest.fixture
def java(toolkit):
    """Java, which METEOR and the toolkit's PTB tokenizer run."""
    import shutil

    if shutil.which("java") is None:
        _unavailable("java not found")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never touch the user's ~/.cache or runs/ from tests; the encoder cache is
    # shared across a session so the weights are converted once.
    cache = tmp_path_factory.getbasetemp() / "captioner-cache"
    monkeypatch.setenv("CAPTIONER_CACHE", os.environ.get("CAPTIONER_TEST_CACHE", str(cache)))
