"""The appliance side of airgap (``airgap serve``): the FTP drop box.

Only the :mod:`airgap.server.ftp` package talks to pyftpdlib; policy, storage, login,
publishing, users, configuration and limits are plain modules. Nothing here is imported by
``airgap.shared``.
"""
