"""Small files the engine keeps beside images: written atomically, read with a size cap.

A power cut must never leave half a manifest, record or resume file: each is written to a
temporary name, flushed, and renamed over the old one. Reading is capped because a path
given by a user may name a FIFO, a character device or something huge.
"""
import os
import stat

from .errors import P2PFleetError


def write_atomic(path: str, data: bytes, mode: int = 0o644, error=P2PFleetError) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        # The rename itself must survive a power cut too (a new record or resume file).
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise error(f"{path}: cannot write: {exc.strerror}") from None


def read_capped(path: str, limit: int, what: str = "file", error=P2PFleetError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or ``error`` naming the problem."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: not a regular file; a {what} must be one")
        if st.st_size > limit:
            raise error(f"{path}: {st.st_size} bytes is too large for a {what} (limit {limit})")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise error(f"{path}: grew past the {limit}-byte limit of a {what} while being read")
        return data
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)


def ensure_private_dir(path: str, error=P2PFleetError) -> str:
    """Create ``path`` (mode 0700) if needed and prove it is a writable directory."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        probe = os.path.join(path, f".probe{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        raise error(f"{path}: state directory is not usable: {exc.strerror}") from None
    return path


MAX_YAML_DEPTH = 64


def read_yaml(path: str, limit: int, what: str = "config", error=P2PFleetError, max_depth: int = MAX_YAML_DEPTH):
    """A YAML file (JSON is YAML too) read as bounded input: a regular file of at most
    ``limit`` bytes (no FIFO hang, no endless device), nested at most ``max_depth`` deep
    (no RecursionError), every problem one ``error`` line naming ``path``."""
    import yaml  # here: the modules' module_utils never need PyYAML

    raw = read_capped(path, limit, what, error=error)

    class _Loader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
        depth = 0

        def compose_node(self, parent, index):
            self.depth += 1
            if self.depth > max_depth:
                mark = self.peek_event().start_mark
                raise error(f"{path}: not a valid {what}: nested deeper than {max_depth} levels "
                            f"(line {mark.line + 1})")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    try:
        return yaml.load(raw, Loader=_Loader)  # nosec B506 - a SafeLoader
    except (yaml.YAMLError, RecursionError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{path}: not valid YAML: {first[:200]}") from None
