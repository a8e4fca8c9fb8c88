"""The writer lock: "a zsfs process is writing this store", an advisory lock (flock) on a file beside
the master, reentrant within a process, refused at once with a clear message while another process
holds it, and seen by readers (``written_elsewhere``) without taking it; and ``master_file``, the
store a path or a link to it names, beside which its shards and its lock are."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from zsfs.errors import StoreError


_held: dict[Path, list] = {}  # lock file -> [open handle, depth]


def _forget_locks_in_a_forked_child() -> None:
    """A forked child (a decoding process) shares the writer's lock through the descriptor it
    inherits: with the writer killed by kill -9, the store stayed locked while a child lived, for
    ever when one hung on a lost mount. The child closes its copies; the writer's own keep the lock."""
    for handle, _ in _held.values():
        with suppress(OSError):
            os.close(handle)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_a_forked_child)


LOCK_SUFFIX = ".lock"


def master_file(path: str | Path) -> Path:
    """The absolute path of the store ``path`` names: a link to a master (in another folder, say)
    names the master it links to, beside which its shards and its lock are. (``realpath``: a
    link loop gives a path that does not exist, not an exception.)"""
    given = Path(path).absolute()
    return Path(os.path.realpath(given)) if given.is_symlink() else given


def lock_path(master: Path) -> Path:
    return master.with_name(f".{master.name}{LOCK_SUFFIX}")


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

NO_LOCKS_HERE = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, 524}
"""flock's errors on a file system that takes no locks (NFS without its lock daemon; Lustre or GPFS
mounted without them: 524 is Linux's ENOTSUPP). The store is still written there, unguarded, as
without ``fcntl``: refusing left zsfs no way to write a store on such a mount."""

LOCK_ATTEMPTS = 100
"""Opens of the lock's name before giving up: each retry follows a holder's release (it removes
the file), so more than a few mean the file system does not keep a file's identity stable."""


def acquire_lock(master: Path) -> Path:
    """Take the advisory lock that says "a zsfs process is writing this store" (reentrant
    within a process). Fails at once, with a clear message, while another process holds it."""
    master = master_file(master)  # through a link too, the real store's lock
    lock = lock_path(master)
    if lock in _held:
        _held[lock][1] += 1
        return lock
    for _ in range(LOCK_ATTEMPTS):
        try:
            master.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a link planted at the lock's name is refused, never followed.
            # 0o666 less the umask, as the store's own files: a group that shares a store shares its lock
            handle = os.open(lock, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
        except OSError as error:
            reason = "it is a link" if error.errno == errno.ELOOP else error.strerror
            if error.errno == errno.EACCES and written_elsewhere(master):  # another user's live writer
                raise StoreError(f"another zsfs process{_holder_of(lock)} is writing {master} (it holds {lock.name}); "
                                 "wait for it to finish, or write to another output") from None
            leftover = ("; no zsfs process of this machine is writing the store, so it is a killed writer's "
                        "leftover: remove it, unless a writer on another machine sharing the folder runs"
                        if error.errno == errno.EACCES and lock.exists() and os.path.exists("/proc/locks") else "")
            raise StoreError(f"cannot write the store {master}: cannot create its lock file {lock} "
                             f"({reason}){leftover}") from None
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            break  # no advisory locks on this platform
        except OSError as error:
            if error.errno in NO_LOCKS_HERE:
                break  # as without fcntl: the file names the writer, nothing enforces it
            holder = _holder(handle) if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else ""
            os.close(handle)
            if error.errno in (errno.ESTALE, errno.ENOENT):  # removed by its holder meanwhile (NFS)
                continue
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreError(f"another zsfs process{holder} is writing {master} (it holds {lock.name}); wait "
                                 "for it to finish, or write to another output") from None
            raise StoreError(f"cannot write the store {master}: cannot lock {lock} ({error.strerror})") from None
        if _names(lock, handle):
            break
        os.close(handle)  # its holder removed that file on release: lock the one at the name now
    else:
        raise StoreError(f"cannot write the store {master}: its lock file {lock} was replaced {LOCK_ATTEMPTS} "
                         "times while this process took it")
    with suppress(OSError):  # who holds it, for another writer's refusal (a disk too full for it: unsaid)
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()} {socket.gethostname()}\n".encode(errors="replace"), 0)
        os.fsync(handle)  # (another NFS client reads it from the server)
    _held[lock] = [handle, 1]
    return lock


def _holder(handle: int) -> str:
    """`` (pid N on HOST)``, as the lock file's holder wrote it, or "" (an older zsfs wrote none):
    a user scripting jobs could not tell which one to wait for."""
    try:
        pid, host = os.pread(handle, 300, 0).decode(errors="replace").split()
    except (OSError, ValueError):
        return ""
    return f" (pid {pid} on {host})" if pid.isdigit() else ""


def _holder_of(lock: Path) -> str:
    """:func:`_holder` of a lock file this user may only read (another user's writer holds it)."""
    try:
        handle = os.open(lock, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return ""
    try:
        return _holder(handle)
    finally:
        os.close(handle)


def _names(path: Path, handle: int) -> bool:
    """Whether ``path`` names the file open as ``handle``. The name is opened again (not only
    stat-ed): an NFS client revalidates a name on open, while a stat may answer from its cache."""
    try:
        named = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC)  # a planted FIFO never blocks
    except OSError:
        return False
    try:
        at_name, held = os.fstat(named), os.fstat(handle)
    except OSError:  # ESTALE: removed by another client
        return False
    finally:
        os.close(named)
    return (at_name.st_dev, at_name.st_ino) == (held.st_dev, held.st_ino)


def release_lock(lock: Path) -> None:
    entry = _held.get(lock)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[lock]
        handle, _ = entry
        # Removed while still held, so no folder keeps a stray lock file; a process that opened
        # it meanwhile sees, once it gets the flock, that the name no longer leads to it, and retries.
        if _names(lock, handle):
            with suppress(OSError):
                os.unlink(lock)
        os.close(handle)  # closing the (last) descriptor releases the flock


def written_elsewhere(master: Path) -> bool:
    """True while another process of this machine holds the store's writer lock, as the kernel
    lists it in ``/proc/locks`` (Linux; False elsewhere, and for a writer on another node of a
    shared file system). Words readers' messages ("being written" instead of "not finished") and
    keeps a namesake store from taking a shards folder in use; it takes no lock and opens nothing,
    so it can neither make a writer's ``acquire_lock`` fail nor block on whatever sits at the lock's name."""
    lock = lock_path(Path(master).absolute())
    if lock in _held:
        return False
    try:
        info = os.stat(lock, follow_symlinks=False)
        with open("/proc/locks", encoding="ascii", errors="replace") as table:
            entries = table.read()
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    held, maybe = flock_holders(entries, info.st_dev, info.st_ino)
    return held or any(_has_open(pid, lock, info) for pid in maybe)


def flock_holders(table: str, device: int, inode: int) -> tuple[bool, set[int]]:
    """From ``/proc/locks``' text: whether a flock is held on the file ``device``:``inode``, and the
    pids holding one on a file of that inode number that the kernel names by another device. The
    kernel names a file by its file system's device, which is not stat's on btrfs subvolumes and
    some overlay mounts, so those may be this file; others are another file system's file (a review
    found a reader told "being written" by an unrelated lock on another mount)."""
    ours = f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"
    number = f":{inode}"
    others: set[int] = set()
    for line in table.splitlines():  # "1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF"
        fields = line.split()  # (a waiter's line has "->" after the number)
        if "FLOCK" not in fields:
            continue
        at = next((i for i, field in enumerate(fields) if field.count(":") == 2 and field.endswith(number)), None)
        if at is None:
            continue
        if fields[at] == ours:
            return True, set()
        if fields[at - 1].isdigit():
            others.add(int(fields[at - 1]))
    return False, others


def _has_open(pid: int, lock: Path, file: os.stat_result) -> bool:
    """Whether process ``pid`` has ``file``, the lock file ``lock``, open. Only its descriptors named
    like the lock are stat'ed (a stat of every file could wait on a stalled network mount); by
    (device, inode), as the holder may name the folder otherwise (a bind mount, a container).
    True where that cannot be told (another user's process, or one gone whose children hold its
    lock), as before devices were compared."""
    folder = f"/proc/{pid}/fd"
    try:
        descriptors = os.listdir(folder)
    except OSError:
        return True
    for descriptor in descriptors:
        with suppress(OSError):  # closed meanwhile
            if os.readlink(f"{folder}/{descriptor}").endswith("/" + lock.name):
                opened = os.stat(f"{folder}/{descriptor}")
                if (opened.st_dev, opened.st_ino) == (file.st_dev, file.st_ino):
                    return True
    return False


def check_store_lock(master: Path) -> None:
    """Fail now, before long work, if the store cannot be written or another process writes it."""
    release_lock(acquire_lock(master))


@contextmanager
def store_lock(master: Path) -> Iterator[None]:
    """Hold the store's writer lock for the block (see :func:`acquire_lock`)."""
    lock = acquire_lock(master)
    try:
        yield
    finally:
        release_lock(lock)
