"""Who else than this user could have written a file: the check, as ssh makes it of an
authorized_keys, of what decides whom to trust (the client's trusted keys, recipients, config
and ledgers; the appliance's trusted signers and accounts)."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path


def written_by_others(path: Path, *, mounted: bool = False) -> str | None:
    """Why someone else than this user (or root) could have written ``path``, or None. For a
    file that decides whom to trust (a trusted key, a recipient, the config), as ssh refuses
    such an authorized_keys: owned by another user, writable by others, or in a folder others
    may write to (one with the sticky bit, as /tmp, lets only a file's owner replace it).

    With ``mounted``, a file on a read-only mount may belong to another user, as its folders
    may: the appliance in a container reads what its host's operator mounted (``-v ...:ro``),
    owned by a user the container has not, and nothing in the container can change it. Its
    mode is asked all the same: on the host, others may be able to write it."""
    me = os.geteuid()
    try:
        info = path.stat()
        folders = {path.parent, path.resolve().parent}  # a link's folder, and its target's
        held = [(folder, folder.stat()) for folder in sorted(folders)]
        owners = not (mounted and os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return None  # not there: whoever reads it says so
    mode = stat.S_IMODE(info.st_mode)
    if owners and info.st_uid not in (me, 0):
        return f"it belongs to another user (uid {info.st_uid})"
    if mode & _writers(info):
        return f"others may write it (mode {mode:04o})"
    for folder, found in held:
        folder_mode = stat.S_IMODE(found.st_mode)
        if owners and found.st_uid not in (me, 0):
            return f"its folder {folder} belongs to another user (uid {found.st_uid})"
        if folder_mode & _writers(found) and not folder_mode & stat.S_ISVTX:
            return f"others may write its folder {folder} (mode {folder_mode:04o})"
    return None


def _writers(info: os.stat_result) -> int:
    """The write bits that let others in: group write too, unless the group is the owner's
    own (a user private group, as a umask of 002 goes with, which Debian's ssh allows)."""
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
        group = grp.getgrgid(info.st_gid)
    except KeyError:
        return 0o022
    private = group.gr_name == owner and set(group.gr_mem) <= {owner}
    return 0o002 if private else 0o022
