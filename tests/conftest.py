import os

# The tests use tiny matrices, where BLAS threads only add synchronisation cost
# (and stall badly on a busy machine). Set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared():
    """../shared beside the checkout: real COCO files and photographs."""
    if not SHARED.is_dir():
        pytest.skip(f"real data not available: {SHARED} is absent")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never touch the user's ~/.cache or runs/ from tests; the encoder cache is
    # shared across a session so the weights are converted once.
    cache = tmp_path_factory.getbasetemp() / "captioner-cache"
    monkeypatch.setenv("CAPTIONER_CACHE", os.environ.get("CAPTIONER_TEST_CACHE", str(cache)))
