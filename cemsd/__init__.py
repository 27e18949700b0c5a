"""cemsd: continuous emissions monitoring data acquisition for N2O abatement."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cemsd")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
