import os

# The tests use tiny matrices, where BLAS threads only add synchronisation cost
# (and stall badly on a busy machine). Set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

from fixtures import SHARED  # noqa: E402

pytest_plugins = ("pytester",)  # test_limits runs the guard on a small suite of its own

# The one guard for what a test needs and a machine may lack (../shared, an oracle, an
# extra, a program, root): a test asks for it through a fixture below, which skips on a
# developer's machine and fails under CI=true. The hook after them fails any other skip
# under CI=true too, so a green CI means every test ran; test_limits checks both, and that
# no test file skips on its own.


def in_ci():
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _unavailable(why):
    """Skip on a developer's machine; under CI (CI=true) fail, so a green CI means the oracle
    tests (real data, the COCO toolkit, Java) really ran."""
    if in_ci():
        pytest.fail(f"CI=true but {why}; CI must run the tests that need it")
    pytest.skip(why)


@pytest.fixture(scope="session")
def shared():
    """../shared beside the checkout: real COCO files and photographs."""
    if not SHARED.is_dir():
        _unavailable(f"real data not available: {SHARED} is absent")
    return SHARED


def _module(name, extra):
    import importlib.util

    if importlib.util.find_spec(name) is None:
        _unavailable(f"{name} is not installed (pip install 'captioner[{extra}]')")


@pytest.fixture(scope="session")
def toolkit():
    """pycocoevalcap, the reference implementation of the COCO metrics (extra `meteor`)."""
    _module("pycocoevalcap", "meteor")


@pytest.fixture(scope="session")
def dask():
    """Dask distributed (extra `cluster`)."""
    _module("distributed", "cluster")


@pytest.fixture(scope="session")
def java(toolkit):
    """Java, which METEOR and the toolkit's PTB tokenizer run."""
    import shutil

    if shutil.which("java") is None:
        _unavailable("java not found")


@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium (Debian's package; .ci/run installs it) -> its path."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _unavailable("headless Chromium not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="session")
def root():
    """Root, and mount(8): to mount a small tmpfs (a disk that really fills up)."""
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        _unavailable("cannot mount a tmpfs here (needs root and mount)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure, whatever raised it (pytest.skip, a skipif mark,
    importorskip): CI must not go green on tests that did not run."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true but the test was skipped ({reason}); CI must run every test: "
            f"ask for what it needs through a fixture in tests/conftest.py"
        )


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never touch the user's ~/.cache or runs/ from tests; the encoder cache is
    # shared across a session so the weights are converted once.
    cache = tmp_path_factory.getbasetemp() / "captioner-cache"
    monkeypatch.setenv("CAPTIONER_CACHE", os.environ.get("CAPTIONER_TEST_CACHE", str(cache)))
