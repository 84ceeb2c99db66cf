"""The pure core of airgap: bundle format, streaming stages, keys and errors.

Nothing here opens a socket, talks to Docker or a terminal; ``client`` and ``server`` build on it.
"""
