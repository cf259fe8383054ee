"""Transform jobs on the embedded engine: contract, incremental CDF runs, no-op, spec change,
full runs, rejects, augmentation variants, custom ops, the fluent API and the runs record."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lakeimg import ImageTransformer, Lake
from lakeimg.errors import SpecError, TableNotFoundError
from lakeimg.image.codecs import decode_pixels
from lakeimg.image.decode import decode_image
from lakeimg.samples import photo_like
from lakeimg.schemas import table_contract
from lakeimg.transform_spec import parse_spec

RESIZE = {"ops": [{"op": "resize", "width": 16, "height": 12}], "output": {"encoding": "png"}}


def write_images(folder: Path, specs: dict[str, int]) -> None:
    """PNG files at relative paths (label folder / name) with seeded photo-like content."""
    for rel, seed in specs.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(30, 40, seed=seed)).save(path)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    src = tmp_path / "src"
    write_images(src, {"cats/a.png": 1, "cats/b.png": 2, "dogs/c.png": 3, "dogs/d.png": 4, "dogs/e.png": 5})
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0, label_from_path="parent")
    lake.src = src  # type: ignore[attr-defined]
    return lake


def rows_by_key(lake: Lake, table: str) -> dict[tuple[str, int], dict]:
    return {(r["uri"], r["variant"]): r for r in lake.read(table).to_pylist()}


def pixels(row: dict) -> np.ndarray:
    return decode_pixels(row["data"], row["encoding"], row["width"], row["height"], row["channels"], row["dtype"])


def test_first_run_writes_the_contract_pixels_and_runs_record(lake: Lake):
    spec = {**RESIZE, "ops": [*RESIZE["ops"], {"op": "histogram", "bins": 4}, {"op": "phash"}]}
    summary = lake.transform("images", "small", spec, workers=0)
    assert (summary.added, summary.updated, summary.deleted, summary.rejected, summary.version) == (5, 0, 0, 0, 0)
    table = lake.read("small")
    assert table.column_names == table_contract("derived").column_names + ["histogram", "phash"]
    sources = {r["uri"]: r for r in lake.read("images", columns=["uri", "content", "content_sha256", "label"]).to_pylist()}
    for row in table.to_pylist():
        src = sources[row["uri"]]
        expected = cv2.resize(decode_image(src["content"]), (16, 12), interpolation=cv2.INTER_AREA)
        assert np.array_equal(pixels(row), expected)
        assert (row["source_sha256"], row["label"], row["dtype"], row["encoding"]) == (src["content_sha256"], src["label"], "uint8", "png")
        assert row["spec_hash"] == summary.spec_hash and sum(row["histogram"]) == 16 * 12 * 3
    assert lake.read("small_rejects").num_rows == 0
    runs = [r for r in lake.read("_lakeimg/runs").to_pylist() if r["job"] == "transform"]
    assert len(runs) == 1
    run = runs[0]
    assert run["inputs"] == [{"table": "images", "version": lake.version("images")}]
    assert run["outputs"][0] == {"table": "small", "version": 0}
    assert run["spec_hash"] == summary.spec_hash == parse_spec(spec).spec_hash
    assert json.loads(run["spec"])["ops"][0]["version"] == 1
    commit = lake.history("small")[0]["lakeimg"]
    assert commit["run_id"] == summary.run_id and commit["spec_hash"] == summary.spec_hash
    assert commit["inputs"] == [{"table": "images", "version": lake.version("images")}]


def test_incremental_run_reads_the_change_feed(lake: Lake):
    lake.transform("images", "small", RESIZE, workers=0)
    src = lake.src  # type: ignore[attr-defined]
    write_images(src, {"cats/a.png": 11, "cats/new.png": 12})  # one changed, one new
    (src / "dogs" / "e.png").unlink()  # one deleted
    lake.ingest([str(src)], workers=0, label_from_path="parent", sync_deletes=True)
    before = rows_by_key(lake, "small")
    summary = lake.transform("images", "small", RESIZE, workers=0)
    assert (summary.mode, summary.updated, summary.added, summary.deleted, summary.unchanged) == ("incremental", 1, 1, 1, 3)
    assert summary.version == 1
    after = rows_by_key(lake, "small")
    uri = lambda rel: (src / rel).resolve().as_uri()  # noqa: E731
    assert (uri("dogs/e.png"), 0) not in after and (uri("cats/new.png"), 0) in after
    assert after[(uri("cats/a.png"), 0)]["source_sha256"] != before[(uri("cats/a.png"), 0)]["source_sha256"]
    assert after[(uri("cats/b.png"), 0)]["run_id"] == before[(uri("cats/b.png"), 0)]["run_id"]  # untouched
    changes = lake.read("images", columns=["uri", "content"]).to_pylist()
    new_content = next(r["content"] for r in changes if r["uri"] == uri("cats/a.png"))
    assert np.array_equal(pixels(after[(uri("cats/a.png"), 0)]), cv2.resize(decode_image(new_content), (16, 12), interpolation=cv2.INTER_AREA))


def test_noop_run_leaves_the_version(lake: Lake):
    first = lake.transform("images", "small", RESIZE, workers=0)
    commits = len(lake.history("small"))
    again = lake.transform("images", "small", RESIZE, workers=0)
    assert again.version == first.version == 0 and len(lake.history("small")) == commits
    assert (again.added, again.updated, again.deleted, again.unchanged) == (0, 0, 0, 5)
    # a source commit that changes nothing the target reads still leaves the target alone
    lake.ingest([str(lake.src)], workers=0, label_from_path="parent")  # type: ignore[attr-defined]
    assert lake.transform("images", "small", RESIZE, workers=0).version == 0


def test_spec_change_recomputes_every_row_in_one_commit(lake: Lake):
    first = lake.transform("images", "small", RESIZE, workers=0)
    bigger = {**RESIZE, "ops": [{"op": "resize", "width": 20, "height": 15}]}
    summary = lake.transform("images", "small", bigger, workers=0)
    assert (summary.mode, summary.updated, summary.added, summary.version) == ("spec_change", 5, 0, first.version + 1)
    table = lake.read("small")
    assert set(table["spec_hash"].to_pylist()) == {parse_spec(bigger).spec_hash} and set(table["width"].to_pylist()) == {20}
    # new feature columns: the commit replaces the table (schema included), still one version
    with_features = {**bigger, "ops": [*bigger["ops"], {"op": "mean_std"}]}
    summary = lake.transform("images", "small", with_features, workers=0)
    assert (summary.updated, summary.version) == (5, first.version + 2)
    assert lake.read("small").column_names[-2:] == ["mean", "std"]


def test_full_recomputes_all_rows_and_drops_filtered_out_rows(lake: Lake):
    lake.transform("images", "small", RESIZE, workers=0)
    summary = lake.transform("images", "small", RESIZE, workers=0, full=True)
    assert (summary.mode, summary.updated, summary.added, summary.deleted, summary.version) == ("full", 5, 0, 0, 1)
    cats = {**RESIZE, "where": "label = 'cats'"}
    summary = lake.transform("images", "small", cats, workers=0)
    assert (summary.updated, summary.deleted) == (2, 3)
    assert set(lake.read("small")["label"].to_pylist()) == {"cats"}


def test_an_incremental_run_with_a_where_clause_computes_the_changed_rows_it_selects(lake: Lake):
    """The plan reads uri, hash, label and the columns `where` names (any case) of the changed uris."""
    cats = {**RESIZE, "where": "label = 'cats' AND Width = 40"}
    assert lake.transform("images", "small", cats, workers=0).added == 2
    write_images(lake.src, {"cats/a.png": 11, "dogs/c.png": 13, "cats/f.png": 6})  # type: ignore[attr-defined]
    lake.ingest([str(lake.src)], workers=0, label_from_path="parent")  # type: ignore[attr-defined]
    summary = lake.transform("images", "small", cats, workers=0)
    assert (summary.mode, summary.added, summary.updated, summary.deleted) == ("incremental", 1, 1, 0)
    sources = {r["uri"]: r["content_sha256"] for r in lake.read("images", columns=["uri", "content_sha256", "label"]).to_pylist() if r["label"] == "cats"}
    assert {u: r["source_sha256"] for (u, _), r in rows_by_key(lake, "small").items()} == sources


def test_failures_go_to_rejects_and_the_run_goes_on(lake: Lake, tmp_path: Path):
    import tifffile

    tifffile.imwrite(lake.src / "dogs" / "float.tif", np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30))  # type: ignore[attr-defined]
    lake.ingest([str(lake.src)], workers=0, label_from_path="parent")  # type: ignore[attr-defined]
    summary = lake.transform("images", "eq", {"ops": [{"op": "equalize"}]}, workers=0)
    assert (summary.added, summary.rejected) == (5, 1)
    rejects = lake.read("eq_rejects").to_pylist()
    assert len(rejects) == 1 and rejects[0]["uri"].endswith("float.tif")
    assert rejects[0]["error_class"] == "op_failed" and "equalize" in rejects[0]["error_message"]
    assert rejects[0]["run_id"] == summary.run_id


def test_augmentation_variants_are_bit_identical_across_runs_and_workers(lake: Lake):
    spec = {
        "ops": [{"op": "resize", "width": 24, "height": 18}, {"op": "augment", "flip": 0.5, "rotate": 15, "brightness": 0.1, "noise": 0.02}],
        "variants": 3,
        "seed": 7,
        "output": {"encoding": "raw"},
    }
    first = lake.transform("images", "aug_a", spec, workers=0)
    lake.transform("images", "aug_b", spec, workers=2)
    a, b = rows_by_key(lake, "aug_a"), rows_by_key(lake, "aug_b")
    assert first.added == 15 and set(a) == set(b)
    assert all(a[k]["data"] == b[k]["data"] for k in a)
    uri = next(iter(a))[0]
    assert len({a[(uri, v)]["data"] for v in range(3)}) == 3  # variants differ
    reseeded = lake.transform("images", "aug_c", {**spec, "seed": 8}, workers=0)
    c = rows_by_key(lake, "aug_c")
    assert reseeded.spec_hash != first.spec_hash and any(a[k]["data"] != c[k]["data"] for k in a)


def test_fewer_variants_delete_the_extra_rows(lake: Lake):
    spec = {"ops": [{"op": "augment", "noise": 0.05}], "variants": 3, "output": "raw"}
    lake.transform("images", "aug", spec, workers=0)
    summary = lake.transform("images", "aug", {**spec, "variants": 2}, workers=0)
    assert (summary.updated, summary.deleted) == (10, 5)
    assert set(lake.read("aug")["variant"].to_pylist()) == {0, 1}


class Invert(ImageTransformer):
    name = "test_invert"
    version = 3

    def transform(self, image):
        return np.iinfo(image.dtype).max - image


def test_fluent_api_builds_the_spec_and_runs_it(lake: Lake):
    builder = lake.table("images").where("label = 'cats'").resize(16, 16).normalize("imagenet")
    expected = parse_spec(
        {"ops": [{"op": "resize", "width": 16, "height": 16}, {"op": "normalize", "method": "imagenet"}], "where": "label = 'cats'"}
    )
    assert builder.spec() == expected.to_dict()
    summary = builder.save("cats_16", workers=0)
    assert (summary.added, summary.rejected, summary.spec_hash) == (2, 0, expected.spec_hash)
    rows = lake.read("cats_16").to_pylist()
    assert {r["label"] for r in rows} == {"cats"} and {r["dtype"] for r in rows} == {"float32"}
    assert {r["encoding"] for r in rows} == {"raw+zstd"}  # auto: png cannot hold float32
    inverted = lake.table("images").apply(Invert()).encode("png").save("inv", workers=0)
    assert inverted.added == 5
    spec = lake.table("images").apply(Invert()).spec()
    assert spec["ops"][0]["version"] == 3 and spec["ops"][0]["impl"].endswith(":Invert")


def test_bad_inputs_raise_typed_errors(lake: Lake):
    with pytest.raises(TableNotFoundError):
        lake.transform("nope", "x", RESIZE, workers=0)
    with pytest.raises(SpecError):
        lake.transform("images", "x", {"ops": [{"op": "resize", "width": 0, "height": 2}]}, workers=0)
    with pytest.raises(SpecError, match="where"):
        lake.transform("images", "x", {**RESIZE, "where": "no_such_column = 1"}, workers=0)
    with pytest.raises(SpecError, match="variants"):
        parse_spec({"ops": [{"op": "flip"}], "variants": 2})


def test_yaml_spec_equals_json_spec(tmp_path: Path):
    path = tmp_path / "spec.yaml"
    path.write_text("ops:\n  - op: resize\n    width: 16\n    height: 12\noutput:\n  encoding: png\n")
    assert parse_spec(path).spec_hash == parse_spec(json.dumps(RESIZE)).spec_hash


def test_tiled_sources_read_the_smallest_large_enough_pyramid_level(tmp_path: Path):
    from lakeimg.jobs.transform import pyramid_level

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photo_like(200, 300, seed=9)).save(src / "big.png")
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0, tile_above_pixels=1000, tile_size=64)
    row = lake.read("images", columns=["uri", "tiled", "levels", "width", "height"]).to_pylist()[0]
    assert row["tiled"] and row["levels"] >= 3
    spec = {"ops": [{"op": "resize", "width": 40, "height": 30}], "output": "png"}
    assert pyramid_level(300, 200, row["levels"], parse_spec(spec)) == 2  # 75x50 >= 40x30 > 38x25
    summary = lake.transform("images", "small", spec, workers=0)
    assert (summary.added, summary.rejected) == (1, 0)
    level2 = lake.read_region("images", row["uri"], 0, 0, 75, 50, level=2)
    out = pixels(lake.read("small").to_pylist()[0])
    assert np.array_equal(out, cv2.resize(level2, (40, 30), interpolation=cv2.INTER_AREA))
    # an op list that does not start by shrinking reads level 0
    full = lake.transform("images", "flipped", {"ops": [{"op": "flip"}], "output": "png"}, workers=0)
    assert full.added == 1 and pixels(lake.read("flipped").to_pylist()[0]).shape == (200, 300, 3)


def test_without_a_readable_change_feed_the_job_compares_everything(lake: Lake):
    lake.transform("images", "small", RESIZE, workers=0)
    src = lake.src  # type: ignore[attr-defined]
    write_images(src, {"cats/a.png": 21, "cats/new.png": 22})
    (src / "dogs" / "e.png").unlink()
    lake.ingest([str(src)], workers=0, label_from_path="parent", sync_deletes=True)
    from deltalake import DeltaTable

    # VACUUM removes the files the change feed since the last run needs (change data files, or
    # the removed data files a commit without them is read from)
    DeltaTable(str(Path(lake.path) / "images")).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    summary = lake.transform("images", "small", RESIZE, workers=0)
    assert (summary.mode, summary.updated, summary.added, summary.deleted, summary.unchanged) == ("compare", 1, 1, 1, 3)


def test_plugins_from_entry_points(tmp_path: Path, lake: Lake, monkeypatch):
    plugin = tmp_path / "plugin"
    (plugin / "lakeimg_test_plugin-1.0.dist-info").mkdir(parents=True)
    (plugin / "lakeimg_test_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: lakeimg-test-plugin\nVersion: 1.0\n")
    (plugin / "lakeimg_test_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[lakeimg.ops]\nep_threshold = lakeimg_test_plugin:Threshold\n\n[lakeimg.encodings]\nnpy = lakeimg_test_plugin:Npy\n"
    )
    (plugin / "lakeimg_test_plugin.py").write_text(
        "import io\nimport numpy as np\nfrom lakeimg.image.ops import ImageTransformer\n"
        "class Threshold(ImageTransformer):\n    version = 1\n    defaults = {'at': 128}\n"
        "    def transform(self, image):\n        return ((image >= self.params['at']) * 255).astype(image.dtype)\n"
        "Threshold.name = 'ep_threshold'\n"
        "class Npy:\n    name = 'npy'\n    defaults = {}\n"
        "    def encode(self, image):\n        buf = io.BytesIO(); np.save(buf, image); return buf.getvalue()\n"
        "    def decode(self, data, width, height, channels, dtype):\n        return np.load(io.BytesIO(data))\n"
    )
    monkeypatch.syspath_prepend(str(plugin))
    summary = lake.transform("images", "bw", {"ops": [{"op": "ep_threshold", "at": 100}], "output": "npy"}, workers=0)
    assert (summary.added, summary.rejected) == (5, 0)
    row = lake.read("bw").to_pylist()[0]
    assert row["encoding"] == "npy" and set(np.unique(pixels(row)).tolist()) <= {0, 255}


def test_shrinking_resize_of_jpegs_uses_dct_scaling_unless_disabled(tmp_path: Path):
    import io

    from PIL import ImageOps

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photo_like(240, 320, seed=4)).save(src / "plain.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    Image.fromarray(photo_like(240, 320, seed=5)).save(src / "rotated.jpg", quality=92, exif=exif)
    lake = Lake(tmp_path / "lake")
    lake.ingest([str(src)], workers=0)
    spec = {"ops": [{"op": "resize", "width": 60, "height": 60, "fit": "inside"}], "output": "png"}
    lake.transform("images", "reduced", spec, workers=0)
    lake.transform("images", "exact", {**spec, "ops": [{**spec["ops"][0], "reduce_on_load": False}]}, workers=0)
    reduced, exact = rows_by_key(lake, "reduced"), rows_by_key(lake, "exact")
    for (uri, variant), row in reduced.items():
        data = (src / uri.rsplit("/", 1)[1]).read_bytes()
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (60, 45))  # both are stored 320x240; 1/4 scale (80x60) still covers 60x45
        small = np.asarray(ImageOps.exif_transpose(im))
        assert small.shape[:2] == ((80, 60) if "rotated" in uri else (60, 80))
        target = (45, 60) if "rotated" in uri else (60, 45)
        assert np.array_equal(pixels(row), cv2.resize(small, target, interpolation=cv2.INTER_AREA))
        full = decode_image(data)
        assert np.array_equal(pixels(exact[(uri, variant)]), cv2.resize(full, target, interpolation=cv2.INTER_AREA))


def test_rows_stream_to_staged_files_and_a_failed_run_is_completed_by_the_next(lake: Lake, monkeypatch):
    from lakeimg.engine.delta_rs import LocalEngine
    from lakeimg.errors import PartialRunError
    from lakeimg.tables import RUNS_TABLE

    lake.transform("images", "small", RESIZE, workers=0)
    staging = Path(lake.path) / "_lakeimg" / "staging"
    assert not staging.exists()  # the staged files were moved into the table, the folder removed
    write_images(lake.src, {"cats/a.png": 21, "cats/new.png": 22})  # type: ignore[attr-defined]
    lake.ingest([str(lake.src)], workers=0, label_from_path="parent")  # type: ignore[attr-defined]

    real_append = LocalEngine.append

    def failing_append(self, name, *args, **kwargs):
        if name == RUNS_TABLE and args and args[0]["status"][0].as_py() == "succeeded":
            raise OSError(28, "No space left on device")
        return real_append(self, name, *args, **kwargs)

    monkeypatch.setattr(LocalEngine, "append", failing_append)
    with pytest.raises(PartialRunError, match="No space left") as failed:
        lake.transform("images", "small", RESIZE, workers=0)
    monkeypatch.undo()
    assert failed.value.landed == {"small": lake.version("small")}  # kept: correct on its own
    assert not staging.exists()
    after_failure = rows_by_key(lake, "small")
    # The next run is planned from the last succeeded run: it looks at the failed run's
    # uris again, finds their rows already made from the same source bytes, and records itself.
    summary = lake.transform("images", "small", RESIZE, workers=0)
    assert (summary.added, summary.updated, summary.unchanged) == (0, 0, 6)
    assert rows_by_key(lake, "small").keys() == after_failure.keys()
    fresh = Lake(str(Path(lake.path).parent / "fresh"))
    fresh.ingest([str(lake.src)], workers=0, label_from_path="parent")  # type: ignore[attr-defined]
    fresh.transform("images", "small", RESIZE, workers=0)
    ours, theirs = rows_by_key(lake, "small"), rows_by_key(fresh, "small")
    assert ours.keys() == theirs.keys() and all(ours[k]["data"] == theirs[k]["data"] for k in ours)
    statuses = {r["run_id"]: r["status"] for r in lake.read(RUNS_TABLE).to_pylist()}
    assert statuses[failed.value.run_id] == "failed" and statuses[summary.run_id] == "succeeded"


def test_net_changes_of_a_commit_that_rewrites_files():
    import pyarrow as pa

    from lakeimg.jobs.transform import _net_changes

    # A commit adding and removing whole files shows the rows it kept from a rewritten file as
    # a delete and an insert in the same version: still there. A later delete wins.
    changes = pa.table({
        "uri": ["kept", "kept", "gone", "gone", "new", "changed", "changed"],
        "_change_type": ["insert", "delete", "insert", "delete", "insert", "update_preimage", "update_postimage"],
        "_commit_version": [3, 3, 2, 3, 3, 4, 4],
    })  # fmt: skip
    upserted, deleted = _net_changes(changes)
    assert (upserted.to_pylist(), deleted.to_pylist()) == (["changed", "kept", "new"], ["gone"])
