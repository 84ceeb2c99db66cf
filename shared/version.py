"""The one place the version lives (read by setuptools and by ``airgap --version``)."""

__version__ = "0.1.0"
