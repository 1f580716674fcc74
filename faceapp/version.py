"""faceapp's version: the package's, the API's (X-Faceapp-Version) and the build's in /metrics.

Its own module, at the bottom of the import graph, so that any module can read it without
importing the package root (faceapp/__init__.py re-exports it; setup.cfg reads it from there).
"""

__version__ = "0.1.0"
