"""The appliance side of airgap (``airgap serve``): the FTP drop box.

Only :mod:`airgap.server.ftp` talks to pyftpdlib; policy, publishing, users, configuration and
limits are plain modules. Nothing here is imported by ``airgap.shared``.
"""
