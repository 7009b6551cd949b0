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
    """Everything under tests/e2e is the end-to-end tier (`-m "not e2e"` leaves it out)."""
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)
