"""Shared pytest configuration and the session-wide tiny trained run (``tiny_demo``).

Hypothesis runs without per-example deadlines: the first example of a property test may
include a cold Taichi kernel compile.
"""
import json
import os
import shutil
import time

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

from npga_taichi.cli.main import cli

settings.register_profile("npga", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "npga"))

FUZZ_EXAMPLES = 20        # per fuzz target in the normal run (tests/test_fuzz.py, well under a minute)
FUZZ_EXAMPLES_SLOW = 500  # with --runslow


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help=f"longer runs of the slow checks: {FUZZ_EXAMPLES_SLOW} examples per fuzz target")
    parser.addoption("--fuzz-examples", type=int, default=None, metavar="N",
                     help=f"examples per fuzz target in tests/test_fuzz.py [default {FUZZ_EXAMPLES}]")


def pytest_configure(config):
    n = config.getoption("--fuzz-examples") or (FUZZ_EXAMPLES_SLOW if config.getoption("--runslow") else FUZZ_EXAMPLES)
    settings.register_profile("npga-fuzz", parent=settings.get_profile("npga"), max_examples=n,
                              suppress_health_check=list(HealthCheck))


_BUILT: dict[str, object] = {}  # one tiny demo per test process, whichever test file asks first


def build_tiny_demo(tmp_path_factory) -> dict:
    """Run ``npga demo OUT --preset tiny --json`` once; returns OUT, the JSON and the wall time.

    Developer shortcut: with ``NPGA_TINY_DEMO=DIR`` (a finished tiny demo) DIR is copied into
    the test's temporary folder and the demo only resumes there (every stage skipped).
    """
    if "error" in _BUILT:  # built once, failed once: do not pay for the pipeline again per test
        pytest.fail(f"the tiny demo failed earlier in this session: {_BUILT['error']}")
    if "out" not in _BUILT:
        out = tmp_path_factory.mktemp("tiny_demo") / "demo"
        if os.environ.get("NPGA_TINY_DEMO"):
            shutil.copytree(os.environ["NPGA_TINY_DEMO"], out)
        start = time.perf_counter()
        try:
            result = CliRunner().invoke(cli, ["demo", str(out), "--preset", "tiny", "--json", "--render-frames", "4"],
                                        catch_exceptions=False)
            assert result.exit_code == 0, result.output
        except BaseException as err:
            _BUILT["error"] = f"{type(err).__name__}: {err}"
            raise
        _BUILT["seconds"] = time.perf_counter() - start
        _BUILT["out"] = out
        _BUILT["summary"] = json.loads(result.stdout.strip().splitlines()[-1])
    return dict(_BUILT)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> dict:
    return build_tiny_demo(tmp_path_factory)
