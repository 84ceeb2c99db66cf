"""The FTP front of the drop box: the only package that talks to pyftpdlib.

- :mod:`.loop`: the off-loop worker plumbing (:class:`Services`, :class:`Mailbox`);
- :mod:`.fs`: the file system view and the authorizer interface;
- :mod:`.session`: one control connection, its logins and the policy per command;
- :mod:`.uploads` and :mod:`.hashcmd`: STOR/APPE and HASH/RANG;
- :mod:`.data`: data connections that report a full disk (552) and resets (426) truthfully;
- :mod:`.server`: the handler class and the listening server for one configuration.

The rules themselves live outside, free of pyftpdlib: :mod:`airgap.server.policy` (who may do
what where), :mod:`airgap.server.storage` (how an upload lands on disk),
:mod:`airgap.server.login` and :mod:`airgap.server.publish`. Nothing here logs a password or
follows a symbolic link.
"""

from airgap.server.ftp.loop import Mailbox, Services, new_ioloop
from airgap.server.ftp.server import Listener, listening_socket, make_server

__all__ = ["Listener", "Mailbox", "Services", "listening_socket", "make_server", "new_ioloop"]
