# hypothesis is imported here, at collection, while the process has one thread: its pytest plugin
# would otherwise import it at the end of a run that selected no hypothesis test, when servers
# left by the tests may still run threads, and CPython 3.11 can then fail the import's compile()
# with "SystemError: AST constructor recursion depth mismatch".
import hypothesis  # noqa: F401

pytest_plugins = [
    "dpe_testkit.s3server",
    "dpe_testkit.openai_server",
    "dpe_testkit.search_server",
    "dpe_testkit.images_server",
    "dpe_testkit.kube_emulator",
]
