"""The package version, in a leaf module: it imports nothing, so any module may import it.

pyproject.toml reads it from here (hatchling's ``[tool.hatch.version]``); ``costwatch.__version__``,
the daemon's ``costwatch_build_info`` metric and the spans' instrumentation scope re-use it.
"""

__version__ = "0.1.0"
