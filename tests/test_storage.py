"""The storage seam: file names and URIs (issue 11, items 5, 10, 11), and reading, writing,
listing and removing files through `lakeimg.storage` on real local files.

A path becomes a URI through `lakeimg.storage.path_to_uri` and back through `uri_to_path`; the round
trip is exact for every name a file system allows, and ingest reads each file from exactly the
path that was listed: a name that percent-decodes to another file (another folder's image,
`/etc/hostname`, a decoy next to it) must get its own bytes. Files that are not regular files
(FIFO, socket, device, dangling symlink, symlink loop) become rejects with their own class and
never hang a run.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image

from lakeimg import Lake
from lakeimg.errors import UriError
from lakeimg.image.decode import decode_image
from lakeimg.jobs.export import export_table
from lakeimg.jobs.ingest import ingest_files
from lakeimg.jobs.listing import list_sources
from lakeimg.kernels.ingest import IngestOptions, ingest_one_file
from lakeimg.kernels.rejects import reject_row
from lakeimg.samples import photo_like
from lakeimg.storage import (
    NotRegularFileError,
    TimeLimitExceeded,
    delete_file,
    list_files,
    open_input,
    path_to_uri,
    read_bytes,
    remove_prefix,
    resolve,
    to_uri,
    uri_to_path,
    write_bytes,
)

HOSTILE_NAMES = [
    "d%2F..%2F..%2Fother%2Fc0001.jpg",
    "decoy%20x.jpg",
    "decoy x.jpg",
    "q?mark.jpg",
    "q",
    "hash#frag.jpg",
    "hash",
    "IMG 0001.jpg",
    "ü[1] 'a' \"b\".jpg",
    "back\\slash.jpg",
    "tab\tname.jpg",
    "new\nline.jpg",
    "100%.jpg",
    "%25%.jpg",
    "paren(1)+a,b=c;d@e:f!$&.jpg",
    "~tilde*.jpg",
    "日本語 ファイル.jpg",
    "d%2F" + "..%2F" * 24 + "etc%2Fhostname",  # decodes to /etc/hostname ("d" is a folder in src)
]
NON_UTF8_NAMES = [b"caf\xe9.jpg", b"\xff\xfe%2F.jpg", b"mixed \xc3\xbc\xff.jpg"]


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo_like(12, 10, seed=seed)).save(buf, "PNG")
    return buf.getvalue()


def _sha(path: str | bytes) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.mark.parametrize("name", HOSTILE_NAMES + [os.fsdecode(n) for n in NON_UTF8_NAMES])
def test_round_trip_is_exact_and_ascii(name):
    path = "/data/photos/" + name
    uri = path_to_uri(path)
    assert uri.startswith("file:///data/photos/") and uri.isascii()
    assert not any(c in uri[len("file://") :] for c in " ?#[]\"\\\t\n")
    assert uri_to_path(uri) == path
    assert to_uri(uri) == uri and to_uri(path) == uri
    try:
        path.encode()
    except UnicodeEncodeError:
        return  # surrogate escapes: pathlib cannot make a URI of them; the bytes round-trip above
    # The references: pathlib's URI reads back to the same path, and url2pathname reads ours.
    assert uri_to_path(Path(path).as_uri()) == path
    assert urllib.request.url2pathname(uri[len("file://") :]) == path


def test_non_utf8_names_keep_their_bytes():
    raw = b"/data/caf\xe9 \xff.jpg"
    uri = path_to_uri(raw)
    assert uri == "file:///data/caf%E9%20%FF.jpg"
    assert os.fsencode(uri_to_path(uri)) == raw


def test_plain_ascii_uris_are_unchanged():
    # Rows of existing lakes keep their keys: names that always ingested get the same URIs.
    for path in ["/a/b.jpg", "/data/dogs/dog_001.png", "/x/IMG(1)+2,3=4.jpg", "/x/a~b-c_d.e.jpg"]:
        assert path_to_uri(path) == "file://" + path
    assert path_to_uri("/a/b c.jpg") == Path("/a/b c.jpg").as_uri()


def test_other_schemes_hosts_and_nul_are_refused():
    for uri in ["s3://bucket/a.jpg", "file://otherhost/a.jpg", "file:///a%00b.jpg", "file:relative.jpg"]:
        with pytest.raises(UriError):
            uri_to_path(uri)
    assert uri_to_path("file://localhost/a%20b") == "/a b"
    assert uri_to_path("file:/a%20b") == "/a b"  # Hadoop's spelling
    assert uri_to_path("/not/a%20uri") == "/not/a%20uri"  # a bare path is never decoded
    assert to_uri("s3://bucket/a b.jpg") == "s3://bucket/a b.jpg"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Real files with hostile names (distinct images), a folder outside the source that the
    old decoding would have read, and one ingest of them."""
    root = tmp_path_factory.mktemp("hostile")
    src, other = root / "src", root / "other"
    (src / "d").mkdir(parents=True)
    other.mkdir()
    outside = other / "c0001.jpg"
    outside.write_bytes(_png(999))
    expected: dict[bytes, str] = {}
    names = [os.fsencode(n) for n in HOSTILE_NAMES] + NON_UTF8_NAMES
    names.append(b"dir \xff/inner.jpg")  # a non-UTF-8 folder: its label too
    os.mkdir(os.fsencode(src) + b"/dir \xff")
    for seed, name in enumerate(names):
        path = os.fsencode(src) + b"/" + name
        with open(path, "wb") as handle:
            handle.write(_png(seed))
        expected[path] = _sha(path)
    lake = root / "lake"
    summary = ingest_files(lake, [str(src)], workers=1, label_from_path="parent")
    rows = Lake(lake).read("images", columns=["uri", "content_sha256", "label", "width"]).to_pylist()
    rejects = Lake(lake).read("images_rejects").to_pylist()
    return dict(root=root, src=src, lake=lake, outside=outside, expected=expected, summary=summary, rows=rows, rejects=rejects)


def test_every_hostile_name_ingests_from_exactly_its_path(hostile):
    assert hostile["rejects"] == []
    assert hostile["summary"].added == len(hostile["expected"]) and hostile["summary"].rejected == 0
    got = {os.fsencode(uri_to_path(r["uri"])): r["content_sha256"] for r in hostile["rows"]}
    assert set(got) == set(hostile["expected"])
    for path, sha in hostile["expected"].items():
        assert got[path] == sha, path  # the bytes of exactly the listed file, never a decoy's
    # Nothing outside the source was read: neither the other folder's image nor /etc/hostname.
    assert _sha(hostile["outside"]) not in got.values()
    if os.path.exists("/etc/hostname"):
        assert _sha("/etc/hostname") not in got.values()
    assert all(r["uri"].isascii() for r in hostile["rows"])
    labels = {r["label"] for r in hostile["rows"]}
    assert labels == {"src", "dir \\udcff"}


def test_rerun_finds_every_hostile_name_unchanged(hostile, tmp_path):
    again = ingest_files(hostile["lake"], [str(hostile["src"])], workers=0)
    assert (again.added, again.updated, again.rejected) == (0, 0, 0)
    assert again.unchanged == len(hostile["expected"])


def test_export_region_and_reproduce_of_hostile_names(hostile, tmp_path):
    lake = Lake(hostile["lake"])
    out = tmp_path / "out"
    summary = export_table(hostile["lake"], "images", out, fmt="png")
    assert (summary["written"], summary["failed"]) == (len(hostile["expected"]), 0)
    exported = {hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest() for p in out.glob("*.png")}
    sources = set()
    for path in hostile["expected"]:
        with open(path, "rb") as handle:
            sources.add(hashlib.sha256(decode_image(handle.read()).reshape(12, 10, 3).tobytes()).hexdigest())
    assert exported == sources
    assert all(p.parent == out for p in out.iterdir())

    for name in ["ü[1] 'a' \"b\".jpg", "new\nline.jpg", "decoy%20x.jpg", "q?mark.jpg"]:
        path = str(hostile["src"] / name)
        with open(path, "rb") as handle:
            want = decode_image(handle.read())
        by_path = lake.read_region("images", path, 2, 3, 5, 4)
        by_uri = lake.read_region("images", path_to_uri(path), 2, 3, 5, 4)
        assert np.array_equal(by_path, want[3:7, 2:7]) and np.array_equal(by_uri, by_path)
    raw = os.fsencode(hostile["src"]) + b"/caf\xe9.jpg"
    with open(raw, "rb") as handle:
        want = decode_image(handle.read())
    assert np.array_equal(lake.read_region("images", os.fsdecode(raw), 0, 0, 10, 12), want)

    from lakeimg.cli import main

    window = tmp_path / "w.png"
    assert main(["region", "--lake", str(hostile["lake"]), str(hostile["src"] / "IMG 0001.jpg"),
                 "1", "1", "4", "4", "--out", str(window)]) == 0
    assert np.asarray(Image.open(window)).shape == (4, 4, 3)

    result = lake.reproduce("images", hostile["summary"].version)
    assert result.identical, result.differences
    assert result.rows == len(hostile["expected"])


def test_reproduce_notices_a_changed_hostile_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    victim = src / "a%20b.jpg"
    victim.write_bytes(_png(1))
    (src / "a b.jpg").write_bytes(_png(2))
    summary = ingest_files(tmp_path / "lake", [str(src)], workers=0)
    victim.write_bytes(_png(3))
    result = Lake(tmp_path / "lake").reproduce("images", summary.version)
    assert [(d["uri"], d["reason"]) for d in result.differences] == [(path_to_uri(str(victim)), "source_changed")]


def _special_tree(src: Path, monkeypatch) -> None:
    src.mkdir()
    (src / "good.png").write_bytes(_png(0))
    os.mkfifo(src / "fifo.jpg")
    monkeypatch.chdir(src)  # AF_UNIX paths are limited to ~108 bytes: bind by a relative name
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.jpg")
    sock.close()
    os.symlink("/dev/null", src / "device.jpg")
    os.symlink("missing.jpg", src / "dangling.jpg")
    os.symlink("loop_b.jpg", src / "loop_a.jpg")
    os.symlink("loop_a.jpg", src / "loop_b.jpg")
    (src / "sub").mkdir()
    os.symlink("..", src / "sub" / "back")  # a folder link to its own parent
    os.symlink("../good.png", src / "sub" / "alias.png")  # a link to a file is that file


SPECIAL_CLASSES = {
    "fifo.jpg": "not_regular_file",
    "sock.jpg": "not_regular_file",
    "device.jpg": "not_regular_file",
    "dangling.jpg": "broken_symlink",
    "loop_a.jpg": "symlink_loop",
    "loop_b.jpg": "symlink_loop",
    "sub/back": "symlink_loop",
}


def test_listing_classifies_special_files_without_opening_them(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _special_tree(src, monkeypatch)
    listing = list_sources([str(src)]).to_pylist()
    kinds = {uri_to_path(r["uri"])[len(str(src)) + 1 :]: r["kind"] for r in listing}
    assert kinds == {**SPECIAL_CLASSES, "good.png": None, "sub/alias.png": None}
    one = list_sources([str(src / "fifo.jpg")]).to_pylist()
    assert [r["kind"] for r in one] == ["not_regular_file"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 1])
def test_special_files_become_rejects_and_ingest_finishes(tmp_path, monkeypatch, workers):
    src = tmp_path / "src"
    _special_tree(src, monkeypatch)
    lake = Lake(tmp_path / "lake")
    summary = ingest_files(lake.path, [str(src)], workers=workers)
    rejects = {uri_to_path(r["uri"])[len(str(src)) + 1 :]: r for r in lake.read("images_rejects").to_pylist()}
    assert {k: r["error_class"] for k, r in rejects.items()} == SPECIAL_CLASSES
    assert all(r["content_sha256"] is None and r["error_message"] for r in rejects.values())
    images = sorted(uri_to_path(u)[len(str(src)) + 1 :] for u in lake.read("images", columns=["uri"])["uri"].to_pylist())
    assert images == ["good.png", "sub/alias.png"]
    assert (summary.added, summary.rejected) == (2, len(SPECIAL_CLASSES))
    again = ingest_files(lake.path, [str(src)], workers=workers)
    assert (again.added, again.rejected, again.unchanged) == (0, 0, 2 + len(SPECIAL_CLASSES))


@pytest.mark.timeout(60)
def test_a_fifo_is_never_opened_for_reading(tmp_path):
    fifo = tmp_path / "swapped.jpg"
    os.mkfifo(fifo)  # a file swapped for a FIFO after listing: the kernel refuses it at once
    with pytest.raises(NotRegularFileError):
        read_bytes(path_to_uri(str(fifo)))
    with pytest.raises(NotRegularFileError):
        read_bytes(str(fifo), time_limit_s=30)
    with pytest.raises(NotRegularFileError):
        open_input(path_to_uri(str(fifo)))
    listing = {"uri": path_to_uri(str(fifo)), "size_bytes": 0, "modified_at": None, "label": None, "kind": None}
    row = ingest_one_file(listing, IngestOptions(run_id="r"))
    assert (row["outcome"], row["error_class"]) == ("reject", "not_regular_file")
    # A crashed or killed worker's reject is made in the driver without touching the file.
    failed = reject_row(listing, "timeout", "worker killed", run_id="r")
    assert (failed["error_class"], failed["content_sha256"]) == ("timeout", None)


def test_bytes_round_trip_through_every_name(tmp_path):
    root = os.fsencode(tmp_path)
    for seed, name in enumerate([os.fsencode(n) for n in HOSTILE_NAMES[1:]] + NON_UTF8_NAMES):
        url = path_to_uri(root + b"/sub/" + name)
        write_bytes(url, _png(seed))
        with open(root + b"/sub/" + name, "rb") as handle:
            assert handle.read() == read_bytes(url) == _png(seed)
        with open_input(url) as handle:  # seekable: a reader can jump to a TIFF's tiles
            handle.seek(8)
            assert handle.read(8) == _png(seed)[8:16]
        delete_file(url)
        assert not os.path.lexists(root + b"/sub/" + name)
    with pytest.raises(FileNotFoundError):
        delete_file(path_to_uri(str(tmp_path / "never.jpg")))
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "never.jpg"))


def test_a_time_limit_stops_a_read_that_takes_too_long(tmp_path):
    big = tmp_path / "sparse.bin"
    with open(big, "wb") as handle:  # 256 MiB of holes: reading them takes far more than 0.1 ms
        handle.truncate(256 << 20)
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(TimeLimitExceeded):
        read_bytes(str(big), time_limit_s=0.0001)
    assert signal.getsignal(signal.SIGALRM) is before
    assert read_bytes(str(big), time_limit_s=600)[-4:] == b"\0" * 4  # a limit that is not reached changes nothing


def test_a_worker_keeps_the_alarm_handler_and_its_limits_still_fire():
    """lakeimg's own workers install the handler once; each limit then only arms a timer."""
    import subprocess
    import sys

    script = (
        "import signal, time\n"
        "from lakeimg.engine.pool import start_worker\n"
        "from lakeimg.storage import TimeLimitExceeded, time_limit\n"
        "start_worker()\n"
        "kept = signal.getsignal(signal.SIGALRM)\n"
        "fired = 0\n"
        "for _ in range(3):\n"
        "    try:\n"
        "        with time_limit(0.01):\n"
        "            time.sleep(5)\n"
        "    except TimeLimitExceeded:\n"
        "        fired += 1\n"
        "    with time_limit(5):\n"
        "        pass\n"
        "time.sleep(0.05)  # a limit left behind would fire here\n"
        "print(fired, signal.getsignal(signal.SIGALRM) is kept)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "True"]


def test_listing_streams_and_sees_every_name(tmp_path):
    root = os.fsencode(tmp_path / "src")
    names = {os.fsencode(n) for n in HOSTILE_NAMES[1:]} | set(NON_UTF8_NAMES)
    os.makedirs(root + b"/dir \xff")
    for name in [*names, b"dir \xff/inner.jpg", b".hidden.jpg"]:
        with open(root + b"/" + name, "wb") as handle:
            handle.write(b"x" * len(name))
    listed = {os.fsencode(uri_to_path(f.url))[len(root) + 1 :]: f for f in list_files(os.fsdecode(root))}
    assert set(listed) == names | {b"dir \xff/inner.jpg"}
    assert all(f.size == len(name) and f.kind is None and f.url.isascii() for name, f in listed.items())
    assert [f.url for f in list_files(next(iter(listed.values())).url)] == [next(iter(listed.values())).url]

    # Streamed: files are found as the walk goes, so a folder removed before the walk reaches it
    # is never listed (a list made up front would still name its files).
    for part in ("a", "b"):
        write_bytes(str(tmp_path / "two" / part / "f.jpg"), b"x")
    walk = list_files(str(tmp_path / "two"))
    first = next(walk)
    remove_prefix(os.path.dirname(uri_to_path(first.url)))
    remove_prefix(str(tmp_path / "two" / ("b" if first.url.endswith("/a/f.jpg") else "a")))
    assert list(walk) == []


def test_remove_prefix_removes_staged_files_and_nothing_outside(tmp_path):
    keep = tmp_path / "keep.jpg"
    keep.write_bytes(b"keep")
    staged = tmp_path / "staging" / "run1"
    write_bytes(str(staged / "part-0.parquet"), b"x")
    write_bytes(str(staged / "sub" / ".part-1.parquet.tmp"), b"x")  # a half-written hidden file
    os.symlink(keep, staged / "link.jpg")
    os.symlink(tmp_path, staged / "folder_link")
    remove_prefix(path_to_uri(str(staged)))
    assert not staged.exists() and keep.read_bytes() == b"keep" and (tmp_path / "staging").is_dir()
    remove_prefix(str(staged))  # already gone: nothing to do
    os.symlink(tmp_path, tmp_path / "staging" / "run2")  # a link is removed, never what it names
    remove_prefix(str(tmp_path / "staging" / "run2"))
    assert not os.path.lexists(tmp_path / "staging" / "run2") and keep.exists()


def test_object_store_urls_resolve_with_delta_rs_option_keys(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    fs, path = resolve("s3://bucket/a b/c.jpg")
    assert (fs.type_name, fs.region, path) == ("s3", "eu-north-1", "bucket/a b/c.jpg")
    options = {"AWS_REGION": "us-west-2", "AWS_ENDPOINT_URL": "127.0.0.1:9000", "AWS_ALLOW_HTTP": "true",
               "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    fs, _ = resolve("s3://bucket/c.jpg", options)
    assert fs.equals(pafs.S3FileSystem(region="us-west-2", endpoint_override="127.0.0.1:9000", scheme="http", access_key="k",
                                       secret_key="s", allow_delayed_open=True))
    fs, path = resolve("abfss://photos@acct.dfs.core.windows.net/a/c.jpg")
    assert (fs.type_name, path) == ("abfs", "photos/a/c.jpg")
    assert resolve("gs://bucket/c.jpg")[0].type_name == "gcs"


def test_the_object_store_path_on_real_files(tmp_path):
    """`local://` URLs go through pyarrow.fs as `s3://` ones do: the same calls, on real files."""
    root = f"local://{tmp_path}/store"
    (tmp_path / "store" / "a" / "b").mkdir(parents=True)  # an object store has no folders to make
    write_bytes(root + "/a/1.jpg", b"one")
    write_bytes(root + "/a/b/2.jpg", b"two")
    write_bytes(root + "/a/.hidden", b"x")
    assert resolve(root)[0].type_name == "local" and (tmp_path / "store" / "a" / "b" / "2.jpg").read_bytes() == b"two"
    listed = sorted(list_files(root + "/a"))
    assert [(f.url, f.size, f.kind) for f in listed] == [(root + "/a/1.jpg", 3, None), (root + "/a/b/2.jpg", 3, None)]
    assert [f.url for f in list_files(root + "/a/1.jpg")] == [root + "/a/1.jpg"]
    assert list(list_files(root + "/none")) == []
    assert read_bytes(root + "/a/b/2.jpg", time_limit_s=60) == b"two"
    with open_input(root + "/a/1.jpg") as handle:
        handle.seek(1)
        assert handle.read() == b"ne"
    delete_file(root + "/a/1.jpg")
    assert not (tmp_path / "store" / "a" / "1.jpg").exists()
    remove_prefix(root + "/a")
    assert not (tmp_path / "store" / "a").exists()
    remove_prefix(root + "/a")  # already gone
