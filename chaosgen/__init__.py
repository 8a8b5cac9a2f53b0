"""chaosgen: compile a network spec to specialized C++ and train it with CHAOS."""

__version__ = "0.1.0"

from .pipeline import compile, compile_spec  # noqa: E402

__all__ = ["compile", "compile_spec", "__version__"]
