"""chaosgen: compile a network spec to specialized C++ and train it with CHAOS.

The Python API (README, "Python API"): compile(spec) -> Net (forward, evaluate, load,
get_weights/set_weights); load(spec, weights) -> Net; train(spec, ...) -> the epochs' records.
Errors are ChaosgenError (chaosgen.errors) with a one-line message; UsageError, its subclass,
for a bad argument."""

__version__ = "0.1.0"

from . import train  # noqa: E402  (a module you call: chaosgen.train(spec, ...) trains)
from .errors import ChaosgenError, UsageError  # noqa: E402
from .loader import Evaluation, Net  # noqa: E402
from .pipeline import compile, compile_spec, load  # noqa: E402

__all__ = [
    "ChaosgenError",
    "Evaluation",
    "Net",
    "compile",
    "compile_spec",
    "load",
    "train",
    "UsageError",
    "__version__",
]
