"""Who a USER/PASS pair is: a sender, a receiver, anonymous (when enabled) or nobody.

scrypt is slow on purpose, so :func:`authenticate` runs on a worker thread, never on the FTP IO
loop. An unknown name costs the same work as a known one, so timing does not tell which names
exist. This module never logs, keeps or returns the password it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from airgap.server.config import AnonymousMode
from airgap.server.layout import Layout
from airgap.server.policy import Principal
from airgap.server.users import PasswordHash, Role, User, UserDB
from airgap.shared.errors import ServerError

ANONYMOUS = ("anonymous", "ftp")
_DUMMY_HASH = PasswordHash.make("not a password of anyone")  # equal work for unknown users


@dataclass(frozen=True)
class Login:
    principal: Principal
    account: User | None  # the account as the password matched it; None: anonymous


def authenticate(
    username: str,
    password: str,
    *,
    users: UserDB,
    layout: Layout,
    anonymous: AnonymousMode,
) -> Login | None:
    """The login these credentials prove, or None; a sender's area is made on its login."""
    if username.lower() in ANONYMOUS:
        if anonymous is AnonymousMode.OFF:
            return None
        return Login(Principal("anonymous", None, anonymous), None)
    user = users.get(username) if username.isascii() else None
    if user is None:
        _DUMMY_HASH.matches(password)
        return None
    if not user.password.matches(password):
        return None
    if user.role is Role.SENDER:
        make_area(layout, user.name)
    return Login(Principal(user.name, user.role), user)


def make_area(layout: Layout, name: str) -> None:
    """The sender's area, made if missing. Something else under its name (an anonymous upload
    called that, with anonymous uploads on) is the operator's to clear, not a wrong password."""
    area = layout.sender_area(name)
    try:
        area.mkdir(mode=0o755)
    except FileExistsError:
        if area.is_symlink() or not area.is_dir():
            raise ServerError(f"{area}, the area of sender {name}, is not a directory") from None
