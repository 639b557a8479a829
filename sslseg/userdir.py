"""A folder of the user's own on this machine, for the warm-start socket and the GPU slot locks.

Both need a name every job of one user can find without being told (so a predictable one in a
shared temporary folder), and both trust what they find there: a socket that is handed a job's
environment and open files, lock files whose holders decide who gets a GPU. In a world-writable
folder such as /tmp, another user could create that name first. So the name is a folder,
created mode 0700, and used only when it is a real folder (not a link) owned by this user that
no one else can write to; otherwise the caller gets a one-line reason and the fix. Another user
can still take the name first (so warm start and GPU claims stop, with that line), but can no
longer receive a job or hold a lock.

Standard library only: it runs before torch is imported.
"""

from __future__ import annotations

import os
import stat


class NotPrivate(OSError):
    """The folder exists but is not safely this user's."""


def private_path(base: str) -> str:
    """Where `private_dir(base)` is: `base`/sslseg-<uid>."""
    return os.path.join(base, f"sslseg-{os.getuid()}")


def private_dir(base: str) -> str:
    """`base`/sslseg-<uid>, created if missing, checked to be this user's alone."""
    path = private_path(base)
    top = os.stat(base)  # (the folder it is in: whoever can rename entries there can swap ours)
    if top.st_uid not in (0, os.getuid()):
        raise NotPrivate(f"{base} belongs to user id {top.st_uid}, who could replace folders in it; "
                         "use a temporary folder of your own or a system one")
    if top.st_mode & 0o022 and not top.st_mode & stat.S_ISVTX:
        raise NotPrivate(f"{base} can be written by other users and lacks the sticky bit (mode "
                         f"{stat.S_IMODE(top.st_mode):o}), so they could replace folders in it; "
                         "use a temporary folder of your own or a system one")
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # (mkdir's mode passes through the umask)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise NotPrivate(f"{path} is not a folder (a link or a file): remove it")
    if st.st_uid != os.getuid():
        raise NotPrivate(f"{path} belongs to user id {st.st_uid}, not to you ({os.getuid()}): have it removed")
    if st.st_mode & 0o022:
        raise NotPrivate(f"{path} can be written by other users (mode {stat.S_IMODE(st.st_mode):o}): "
                         f"chmod 700 it, or remove it")
    return path
