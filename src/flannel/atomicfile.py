"""Safe file access shared by flanneld (subnet.env) and the CNI plugin (saved configs, version cache).

Both run as root, write files that others read, and read files that others may have put in place, so every
file operation here follows four rules:

1. **Atomic and durable replacement.** Readers see the old file or the new one, never half of either, and a
   crash does not lose a file that was reported written: a temporary file in the same directory gets its mode
   explicitly (the umask must not narrow it), is fsynced, renamed over the target, and the directory is fsynced.
2. **Never write through a link.** The temporary file is created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under an
   unpredictable name, retried on a collision, so a link planted at any name is never opened (issue 15: a
   symlink at the old ``.<name>.<pid>.tmp`` made both writers overwrite the link's target). The rename
   replaces a link at the final name instead of following it. Every step goes through one descriptor of the
   directory, so the directory that was checked is the one written into.
3. **Never write into a directory someone else controls.** It must belong to root or to us, and must not be
   writable by others unless the sticky bit stops them from renaming our files (``private`` directories, like
   the CNI data directory, must not be writable by group or others at all, and must not be a link).
4. **Reads never hang and never run away.** ``O_NONBLOCK`` (a FIFO opens at once instead of waiting for a
   writer), only regular files, and at most ``limit`` bytes.

The CNI plugin imports this on every pod start, so it imports nothing but ``posix``, the built-in module
that ``os`` re-exports: ``os`` itself costs 1.3 ms of start-up (``_collections_abc``, ``stat``, ``posixpath``),
``stat`` and ``errno`` are not loaded by ``python -S`` (their few constants are spelt out below). Only
:func:`write_atomically`, which the plugin calls once per delegate binary at most, imports ``os`` for its path.
"""

from __future__ import annotations

import posix

TMP_PREFIX = "."
"""Temporary files start with a dot: no container ID and no subnet file name does."""
TMP_SUFFIX = ".tmp"
"""And end in ``.tmp``, so leftovers of a crash are easy to recognise and collect."""
TMP_ATTEMPTS = 32
"""Fresh random names tried before giving up; a collision of 64 random bits means someone planted the name."""
_MAX_STEM_BYTES = 200
"""Longer target names are cut in the temporary name, which must stay within NAME_MAX (255 bytes)."""

_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFREG = 0o100000
_S_IFLNK = 0o120000
_S_ISVTX = 0o1000
_KINDS = {0o010000: "a FIFO", 0o020000: "a character device", _S_IFDIR: "a directory", 0o060000: "a block device",
          _S_IFLNK: "a symbolic link", 0o140000: "a socket"}
_EACCES = 13
_EEXIST = 17
_EINVAL = 22
_EFBIG = 27
_ELOOP = 40


class UnsafeDirectoryError(OSError):
    """A directory that someone other than root or us could change under our feet; refused for writing."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(_EACCES, reason, path)

    def __str__(self) -> str:
        return f"unsafe directory {self.filename}: {self.strerror}"


def directory_problem(st: posix.stat_result, *, private: bool) -> str | None:
    """Why a directory with this status is unsafe to write into, or None when it is fine.

    Owner: root or our effective user, as ssh's StrictModes demands. Without ``private``, a directory others
    (or a group other than root's and ours) may write to needs the sticky bit, which keeps them from renaming
    or removing our files; with ``private``, group and others may not write at all.
    """
    mode = st.st_mode & 0o7777
    if st.st_uid not in (0, posix.geteuid()):
        return f"it is owned by uid {st.st_uid}, neither by root nor by us (uid {posix.geteuid()})"
    if private:
        if mode & 0o022:
            return f"it is writable by group or others (mode {mode:04o}); it must be writable by its owner only"
        return None
    sticky = mode & _S_ISVTX
    if mode & 0o002 and not sticky:
        return f"it is writable by others without the sticky bit (mode {mode:04o})"
    if mode & 0o020 and not sticky and st.st_gid not in (0, posix.getegid()):
        return f"it is writable by group {st.st_gid} without the sticky bit (mode {mode:04o})"
    return None


def open_directory(path: str, *, private: bool = False) -> int:
    """A descriptor of the directory ``path``, checked with :func:`directory_problem`; the caller closes it.

    A ``private`` directory must not be a symbolic link. Otherwise links are followed (``/var/run`` is one on
    most systems, and an administrator may link ``/run/flannel`` elsewhere), but only a link that root or we
    own, and the directory it leads to is checked like any other. Raises :class:`UnsafeDirectoryError`, or
    the ``OSError`` of a missing path or a non-directory.
    """
    st = posix.lstat(path)
    if st.st_mode & _S_IFMT == _S_IFLNK:
        if private:
            raise UnsafeDirectoryError(path, "it is a symbolic link")
        if st.st_uid not in (0, posix.geteuid()):
            raise UnsafeDirectoryError(path, f"it is a symbolic link owned by uid {st.st_uid}")
    flags = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC | (posix.O_NOFOLLOW if private else 0)
    fd = posix.open(path, flags)
    try:
        problem = directory_problem(posix.fstat(fd), private=private)
        if problem is not None:
            raise UnsafeDirectoryError(path, problem)
    except BaseException:
        posix.close(fd)
        raise
    return fd


def write_atomically(path: str, data: bytes, mode: int, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` (file mode exactly ``mode``); the directory must exist and be safe.

    ``sync=False`` skips both fsyncs, for caches that may be lost. On failure the temporary file is removed
    and the ``OSError`` (:class:`UnsafeDirectoryError` for a refused directory) propagates; ``path`` is left
    untouched.
    """
    import os  # for its path functions; the plugin's every-call paths use write_in

    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = open_directory(directory)
    try:
        write_in(dir_fd, name, data, mode, sync=sync)
    finally:
        posix.close(dir_fd)


def write_in(dir_fd: int, name: str, data: bytes, mode: int, *, sync: bool = True) -> None:
    """:func:`write_atomically` of ``name`` inside the (already checked) directory ``dir_fd``."""
    fd, tmp = create_temp(dir_fd, name)
    try:
        try:
            posix.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[posix.write(fd, view) :]
            if sync:
                posix.fsync(fd)
        finally:
            posix.close(fd)
        posix.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:  # noqa: SIM105 - contextlib is one import more on the CNI plugin's start-up path
            posix.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    if sync:
        posix.fsync(dir_fd)


def create_temp(dir_fd: int, name: str) -> tuple[int, str]:
    """Create a new, empty temporary file for ``name`` (mode 0600) in ``dir_fd``: its descriptor and name.

    The name is ``.<name>.<16 random hex digits>.tmp``; whatever already exists under a candidate name (a
    file, a link, a dangling link) makes ``O_EXCL`` fail, and the next random name is tried.
    """
    stem = name if len(name.encode("utf-8", "surrogateescape")) <= _MAX_STEM_BYTES else name[:48]
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC
    for _ in range(TMP_ATTEMPTS):
        tmp = f"{TMP_PREFIX}{stem}.{random_token()}{TMP_SUFFIX}"
        try:
            return posix.open(tmp, flags, 0o600, dir_fd=dir_fd), tmp
        except FileExistsError:
            continue
    raise FileExistsError(_EEXIST, f"every temporary name tried ({TMP_ATTEMPTS}) already exists", name)


def random_token() -> str:
    """16 hex digits from the kernel's random source: a temporary name nobody can plant in advance."""
    return posix.urandom(8).hex()


def read_bounded(path: str, limit: int, *, dir_fd: int | None = None, follow: bool = True) -> bytes:
    """The whole content of the regular file ``path``, refusing anything that could hang or flood us.

    Opened with ``O_NONBLOCK``, so a FIFO does not wait for a writer; anything but a regular file is refused,
    and so is a file of more than ``limit`` bytes (checked while reading, as the file may grow). Without
    ``follow``, a symbolic link is refused too. The ``OSError`` names the path; ``FileNotFoundError`` stays
    itself, so that callers can treat a missing file as they like.
    """
    flags = posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC | (0 if follow else posix.O_NOFOLLOW)
    try:
        fd = posix.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == _ELOOP and not follow:
            raise OSError(_ELOOP, "is a symbolic link, which is not followed here", path) from None
        raise
    try:
        kind = posix.fstat(fd).st_mode & _S_IFMT
        if kind != _S_IFREG:
            raise OSError(_EINVAL, f"not a regular file but {_KINDS.get(kind, 'something else')}", path)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = posix.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        posix.close(fd)
    if size > limit:
        raise OSError(_EFBIG, f"larger than the {limit} bytes allowed", path)
    return b"".join(chunks)
