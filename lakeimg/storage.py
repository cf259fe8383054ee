"""Local paths <-> file:// URIs, the one place lakeimg converts between them.

A file's URI is its absolute path percent-encoded byte by byte as RFC 3986 asks, and
`uri_to_path` is its exact inverse, so every name a file system allows survives the round trip: a space, `%`, `?`, `#`, `[]`, quotes, a backslash,
a tab or newline, non-ASCII letters. A name that is not valid UTF-8 keeps its bytes: the path
string holds them as surrogate escapes (what `os.fsdecode` and `os.listdir` give), and the URI
percent-encodes the raw bytes, so URIs are always plain ASCII (they fit Arrow's UTF-8 strings).

The encoding is `pathlib.Path(p).as_uri()`'s except that the characters RFC 3986 allows as they
are in a path (`!$&'()*+,;=:@`) stay unencoded: names such as `IMG(1).jpg` or `a+b.jpg` always
ingested, and keep the URIs existing lakes hold for them. `uri_to_path` reads both spellings.

Strings without a scheme are taken as paths; URLs of other schemes (`s3://`, `az://`, ...) are
not local files: `uri_to_path` refuses them with `UriError`, and `local_path_or_none` tells
callers that hand them on to an object store.

Example:
    >>> path_to_uri("/data/IMG 0001.jpg")
    'file:///data/IMG%200001.jpg'
    >>> uri_to_path("file:///data/IMG%200001.jpg")
    '/data/IMG 0001.jpg'
    >>> name = "/data/q?mark #1 100%.jpg"
    >>> uri_to_path(path_to_uri(name)) == name
    True
"""

from __future__ import annotations

import errno
import os
import re
import stat
from urllib.parse import quote_from_bytes, unquote_to_bytes

from lakeimg.errors import UriError

__all__ = [
    "NotRegularFileError",
    "has_scheme",
    "local_path_or_none",
    "open_regular_file",
    "path_to_uri",
    "printable",
    "to_uri",
    "uri_to_path",
]

# A scheme followed by "//" (every object store URL has one), or "file:" (Hadoop writes "file:/p").
# A bare "name:rest" stays a path: "photos:2024/a.jpg" is a legal relative file name.
# RFC 3986 pchar minus the unreserved characters quote() never encodes: sub-delims, ":" and "@".
_PATH_SAFE = "/!$&'()*+,;=:@"
_SCHEME = re.compile(r"^(?:([A-Za-z][A-Za-z0-9+.-]*):(?=//)|([Ff][Ii][Ll][Ee]):)")


def has_scheme(text: str) -> bool:
    """Whether `text` is a URL (`file:...`, `s3://...`) rather than a bare path.

    Example:
        >>> has_scheme("file:///a.jpg"), has_scheme("s3://bucket/a.jpg"), has_scheme("photos:2024/a.jpg")
        (True, True, False)
    """
    return _SCHEME.match(text) is not None


def path_to_uri(path: str | bytes | os.PathLike) -> str:
    """The absolute file:// URI of a local path (relative paths are taken from the working folder).

    Every byte that RFC 3986 does not allow in a path (space, `%`, `?`, `#`, `[]`, `"`, `\\`,
    control characters, every non-ASCII byte) is percent-encoded, so the URI names exactly this
    file and `uri_to_path` gives the path back. Names that always ingested keep the URIs lakeimg
    wrote for them ("file:///a/b(1).jpg").

    Example:
        >>> path_to_uri("/a/b(1).jpg"), path_to_uri("/d/ü[1] #2.jpg")
        ('file:///a/b(1).jpg', 'file:///d/%C3%BC%5B1%5D%20%232.jpg')
        >>> path_to_uri(b"/d/caf\\xe9.jpg")  # not UTF-8: its raw bytes are encoded
        'file:///d/caf%E9.jpg'
    """
    raw = os.fsencode(os.path.abspath(os.fsdecode(path)))
    if raw.startswith(b"//"):
        # A path starting with "//" would read as a URI authority (host); one "/" means the same file.
        raw = b"/" + raw.lstrip(b"/")
    return "file://" + quote_from_bytes(raw, safe=_PATH_SAFE)


def uri_to_path(uri: str) -> str:
    """The local path of a file URI (`file:///p`, `file://localhost/p` or Hadoop's `file:/p`).

    A string without a scheme is already a path and comes back unchanged (a name with "%" in it
    is not decoded). "?" and "#" are part of the path, not a query or fragment: lakeimg's own
    URIs encode them, and a local file has neither.

    Raises:
        UriError: another scheme (an object store URL), a host other than localhost, or a NUL byte.

    Example:
        >>> uri_to_path("file:///d/caf%C3%A9%25.jpg"), uri_to_path("file:/d/a.jpg"), uri_to_path("/d/a%20b.jpg")
        ('/d/café%.jpg', '/d/a.jpg', '/d/a%20b.jpg')
        >>> uri_to_path("s3://bucket/a.jpg")
        Traceback (most recent call last):
        ...
        lakeimg.errors.UriError: s3://bucket/a.jpg: not a local file (scheme 's3')
    """
    match = _SCHEME.match(uri)
    if match is None:
        return uri
    scheme = (match.group(1) or match.group(2)).lower()
    if scheme != "file":
        raise UriError(uri, f"not a local file (scheme {scheme!r})")
    rest = uri[match.end() :]
    if rest.startswith("//"):
        host, slash, rest = rest[2:].partition("/")
        if host.lower() not in ("", "localhost"):
            raise UriError(uri, f"names host {host!r}; only local files can be read")
        rest = slash + rest
    if not rest.startswith("/"):
        raise UriError(uri, "a file URI needs an absolute path")
    raw = unquote_to_bytes(rest)
    if b"\0" in raw:
        raise UriError(uri, "the path contains a NUL byte")
    return os.fsdecode(raw)


def local_path_or_none(uri: str) -> str | None:
    """The local path of a file URI or bare path; None for another scheme (an object store URL).

    Example:
        >>> local_path_or_none("file:///a%20b/c"), local_path_or_none("s3://bucket/c")
        ('/a b/c', None)
    """
    match = _SCHEME.match(uri)
    if match is not None and (match.group(1) or match.group(2)).lower() != "file":
        return None
    return uri_to_path(uri)


def to_uri(path_or_uri: str) -> str:
    """A user's source or image reference as a URI: paths (with "~") become file URIs, URIs stay.

    A file URI is re-encoded from its path, so hand-typed URIs match the ones ingest writes.

    Example:
        >>> to_uri("/photos/a b.jpg"), to_uri("file:///photos/a%20b.jpg"), to_uri("s3://bucket/a b.jpg")
        ('file:///photos/a%20b.jpg', 'file:///photos/a%20b.jpg', 's3://bucket/a b.jpg')
    """
    if not has_scheme(path_or_uri):  # a bare path: the shell's "~" may have been quoted away
        return path_to_uri(os.path.expanduser(path_or_uri))
    local = local_path_or_none(path_or_uri)
    return path_or_uri if local is None else path_to_uri(local)


def printable(text: str) -> str:
    """`text` with the surrogate escapes of non-UTF-8 names written as backslash escapes.

    For messages and labels stored in UTF-8 string columns, which cannot hold lone surrogates.

    Example:
        >>> printable(os.fsdecode(b"/d/caf\\xe9.jpg"))
        '/d/caf\\\\udce9.jpg'
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def open_regular_file(path: str):
    """Open a local file for reading, refusing anything but a regular file without blocking.

    O_NONBLOCK keeps open() from waiting on a FIFO with no writer; the check after it catches a
    path that was swapped for a FIFO, socket or device after it was listed.

    Example:
        >>> import tempfile
        >>> with open_regular_file(tempfile.mkstemp()[1]) as handle:
        ...     handle.read()
        b''
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class NotRegularFileError(OSError):
    """A path that was to be read as a file is a folder, FIFO, socket or device."""
