"""guardserve: the package version and the umbrella `guardserve` command."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("guardserve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
