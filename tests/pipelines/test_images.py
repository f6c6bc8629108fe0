"""Image paths are confined to the image root, and every file kind at an image path is a reject.

Issue 15: an absolute path or a ``../..`` escape in a record copied a file from outside
``--image-root`` into a shard, and a folder at an image path killed the build
(``IsADirectoryError``). Here each hostile kind is met at three levels: the resolver, the reader,
and a whole build with a secret file outside the root whose bytes must be in no output and which
must never be opened.
"""

import builtins
import io
import json
import os

import pytest
from PIL import Image

from pipelines.images import ImageRoot, read_image
from pipelines.main import run
from pipelines.sources import Rejected

SECRET = b"TOP-SECRET-outside-the-image-root"


def _jpeg(w=32, h=24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path):
    """``root/`` holding good and hostile entries, and ``secret.jpg`` next to it (outside)."""
    root = tmp_path / "root"
    (root / "cot" / "gqa").mkdir(parents=True)
    (root / "cot" / "gqa" / "ok.jpg").write_bytes(_jpeg())
    (root / "cot" / "gqa" / "folder.jpg").mkdir()
    (root / "cot" / "gqa" / "empty.jpg").write_bytes(b"")
    os.mkfifo(root / "cot" / "gqa" / "fifo.jpg")
    (tmp_path / "secret.jpg").write_bytes(SECRET)
    os.symlink(tmp_path / "secret.jpg", root / "cot" / "gqa" / "link_out.jpg")
    os.symlink("ok.jpg", root / "cot" / "gqa" / "link_in.jpg")
    os.symlink(tmp_path, root / "cot" / "up")  # a folder link leading out
    os.symlink("loop.jpg", root / "cot" / "gqa" / "loop.jpg")
    return tmp_path, root


@pytest.mark.parametrize("rel, reason", [
    ("cot/gqa/folder.jpg", "not_a_regular_file"),
    ("cot/gqa/fifo.jpg", "not_a_regular_file"),  # never opened: opening a FIFO blocks
    ("cot/gqa/empty.jpg", "empty_image"),
    ("cot/gqa/link_out.jpg", "path_outside_root"),
    ("cot/up/secret.jpg", "path_outside_root"),
    ("../secret.jpg", "path_outside_root"),
    ("cot/gqa/../../../secret.jpg", "path_outside_root"),
    ("SECRET_ABS", "path_outside_root"),
    ("cot/gqa/loop.jpg", "not_a_regular_file"),
])
def test_local_hostile_paths_are_rejected(tree, rel, reason):
    tmp, root = tree
    rel = str(tmp / "secret.jpg") if rel == "SECRET_ABS" else rel
    with pytest.raises(Rejected) as e:
        ImageRoot(str(root)).read(rel)
    assert e.value.reason == reason, e.value.detail
    assert str(tmp) not in e.value.detail.replace(rel, "")  # no local path beyond the record's own


@pytest.mark.parametrize("rel", ["cot/gqa/ok.jpg", "cot/gqa/link_in.jpg", "cot/gqa/../gqa/ok.jpg", "./cot/gqa/ok.jpg"])
def test_paths_that_stay_inside_the_root_are_read(tree, rel):
    _, root = tree
    assert ImageRoot(str(root)).read(rel) == _jpeg()


def test_missing_image_detail_names_paths_relative_to_the_root(tree):
    tmp, root = tree
    with pytest.raises(Rejected) as e:
        read_image(ImageRoot(str(root)), ["cot/gqa", "cot/v7w"], "nope.jpg")
    assert e.value.reason == "missing_image"
    assert "cot/gqa/nope.jpg" in e.value.detail and "cot/v7w/nope.jpg" in e.value.detail
    assert str(tmp) not in e.value.detail


def test_a_root_that_is_itself_a_symlink_works(tree):
    tmp, root = tree
    os.symlink(root, tmp / "root_link")
    assert ImageRoot(str(tmp / "root_link")).read("cot/gqa/ok.jpg") == _jpeg()
    with pytest.raises(Rejected, match="outside"):
        ImageRoot(str(tmp / "root_link")).read("../secret.jpg")


@pytest.mark.parametrize("rel", ["/etc/passwd", "../other/x.jpg", "cot/../../x.jpg", "gs://other-bucket/x.jpg",
                                 "memtest://crop-test/secret.jpg", "s3:/x.jpg", "cot/..\\..\\x.jpg"])
def test_remote_root_rejects_absolute_dotdot_and_other_buckets(rel):
    with pytest.raises(Rejected) as e:
        ImageRoot("gs://bucket/images").resolve(rel)
    assert e.value.reason == "path_outside_root"


def test_remote_root_joins_plain_relative_paths():
    """Joined through Beam's FileSystems, so the root's scheme must be registered: the in-memory
    ``memtest://`` store (gs:// needs apache-beam[gcp], which Beam 2.77 checks on join)."""
    import memfs

    root = memfs.PREFIX + "bucket/images"
    assert ImageRoot(root).resolve("cot/gqa/a.jpg") == root + "/cot/gqa/a.jpg"


def _corpus(tmp, root):
    """A Visual-CoT gqa file and a LLaVA file naming good and hostile image paths."""
    (tmp / "viscot").mkdir()
    rows = []
    for i, name in enumerate(["ok.jpg", "folder.jpg", "fifo.jpg", "empty.jpg", "link_out.jpg", "../../../secret.jpg",
                              str(tmp / "secret.jpg"), "../up/secret.jpg", "link_in.jpg"]):
        rows.append(json.dumps({"question": f"q{i}", "answer": "a", "image": name, "width": 32, "height": 24,
                                "bboxs": [[1, 1, 10, 10]], "dataset": "gqa", "split": "train"}))
    (tmp / "viscot" / "gqa_cot_train.jsonl").write_text("\n".join(rows) + "\n")
    conv = [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]
    items = [{"id": i, "image": p, "conversations": conv}
             for i, p in enumerate(["cot/gqa/ok.jpg", "../secret.jpg", str(tmp / "secret.jpg"), "cot/up/secret.jpg",
                                    "cot/gqa/folder.jpg"])]
    (tmp / "llava.json").write_text(json.dumps(items))
    recipe = tmp / "r.yaml"
    recipe.write_text(f"""name: hostile
inputs: {{visual_cot_dir: {tmp / 'viscot'}, llava_json: {tmp / 'llava.json'}, image_root: {root}}}
sources: {{gqa: {{}}}}
shards: {{name: h, max_samples: 100}}
""")
    return str(recipe)


def test_build_with_hostile_paths_finishes_and_never_opens_outside_the_root(tree, monkeypatch):
    tmp, root = tree
    recipe = _corpus(tmp, root)
    secret = os.path.realpath(tmp / "secret.jpg")
    opened = []
    real_open, real_os_open = builtins.open, os.open

    def watch_open(file, *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)):
            opened.append(os.path.realpath(os.fsdecode(file)))
        return real_open(file, *a, **k)

    def watch_os_open(path, *a, **k):
        opened.append(os.path.realpath(os.fsdecode(path)))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", watch_open)
    monkeypatch.setattr(os, "open", watch_os_open)
    out = tmp / "out"
    manifest = run(["--recipe", recipe, "--output", str(out), "--log-level", "WARNING", "--fail-on-internal-error",
                    "--max-reject-fraction", "1"])  # hostile on purpose: most records are rejects
    monkeypatch.undo()

    assert secret not in opened and not any(p.endswith("fifo.jpg") for p in opened)
    assert any(p.endswith("ok.jpg") for p in opened)  # the watch does see image reads
    rejects = [json.loads(line) for line in open(out / "rejects.jsonl")]
    by_line = {(r["file"], r["line"]): r["reason"] for r in rejects}
    assert by_line == {
        ("gqa_cot_train.jsonl", 2): "not_a_regular_file", ("gqa_cot_train.jsonl", 3): "not_a_regular_file",
        ("gqa_cot_train.jsonl", 4): "empty_image", ("gqa_cot_train.jsonl", 5): "path_outside_root",
        ("gqa_cot_train.jsonl", 6): "path_outside_root", ("gqa_cot_train.jsonl", 7): "path_outside_root",
        ("gqa_cot_train.jsonl", 8): "path_outside_root",
        ("llava.json", 2): "path_outside_root", ("llava.json", 3): "path_outside_root",
        ("llava.json", 4): "path_outside_root", ("llava.json", 5): "not_a_regular_file"}
    assert manifest["totals"]["per_source"] == {"gqa": 2, "llava": 1}
    for name in os.listdir(out):
        data = open(out / name, "rb").read()
        assert SECRET not in data, f"{name} holds the secret"
        if name.endswith(".tar"):
            assert str(tmp).encode() not in data, f"{name} names a local path"
    for r in rejects:  # only the two records that wrote an absolute path name one (their own)
        if (r["file"], r["line"]) not in {("gqa_cot_train.jsonl", 7), ("llava.json", 3)}:
            assert str(tmp) not in json.dumps(r), r
