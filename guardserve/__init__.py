"""guardserve: the package version and the umbrella `guardserve` command."""

__version__ = "0.1.0"  # pyproject.toml reads it from here
