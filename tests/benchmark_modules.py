"""Load a script of ``benchmarks/`` (not a package) as a module, for the tests that check it."""
import importlib.util
import sys
from pathlib import Path


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as the module ``<name>`` (registered in ``sys.modules``: the
    dataclasses of a module look it up there)."""
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
