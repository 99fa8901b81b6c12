"""residual-stream: taps, feature visualizations, metrics and ablations of a ResNet's residual stream."""
import os
from importlib.metadata import PackageNotFoundError, version

# OpenMP threads that spin while waiting stall badly when the cores are shared; speed only, never results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("residual-stream")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"
