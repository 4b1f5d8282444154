"""genloop: the lifecycle of a generative model, from raw data to a served, monitored, retrained product."""

from importlib.metadata import PackageNotFoundError, version

try:  # one version, pyproject.toml's, as installed
    __version__ = version("genloop")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
