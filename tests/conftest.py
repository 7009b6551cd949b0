from pathlib import Path

# hypothesis is imported here, at collection, while the process has one thread: its pytest plugin
# would otherwise import it at the end of a run that selected no hypothesis test, when servers
# left by the tests may still run threads, and CPython 3.11 can then fail the import's compile()
# with "SystemError: AST constructor recursion depth mismatch".
import hypothesis  # noqa: F401
import pytest

pytest_plugins = [
    "dpe_testkit.s3server",
    "dpe_testkit.openai_server",
    "dpe_testkit.search_server",
    "dpe_testkit.images_server",
    "dpe_testkit.kube_emulator",
]

E2E_DIR = Path(__file__).parent / "e2e"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is the end-to-end tier, and every test against the S3 server is slow.

    Markers only select: `-m "not slow and not e2e"` is the inner loop, plain `pytest` runs everything.
    """
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("s3") is not None:
            item.add_marker(pytest.mark.slow)
