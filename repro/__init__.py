"""residual-stream: taps, feature visualizations, metrics and ablations of a ResNet's residual stream."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("residual-stream")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"
