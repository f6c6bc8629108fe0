"""The dataset card: parses with huggingface_hub, and datasets loads the shards through it."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
import yaml

from crop.data import card

_spec = importlib.util.spec_from_file_location("tinyshards", Path(__file__).parents[1] / "viz" / "tinyshards.py")
tinyshards = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tinyshards)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("built")
    info = tinyshards.make_dataset(folder, shards=2)
    path = card.write_card(str(folder), info["manifest"], info["stats"], info["recipe"])
    return folder, Path(path), info


def test_write_card_returns_readme_path(built):
    folder, path, _ = built
    assert path == folder / "README.md" and path.is_file()


def test_card_parses_with_huggingface_hub(built):
    from huggingface_hub import DatasetCard

    _, path, info = built
    loaded = DatasetCard.load(path)
    data = loaded.data.to_dict()
    assert data["license"] == "other" and data["license_name"] == card.LICENSE_NAME
    assert data["language"] == ["en"]
    assert data["size_categories"] == ["n<1K"]
    assert "visual-question-answering" in data["task_categories"]
    assert data["configs"] == [{"config_name": "default", "default": True,
                                "data_files": [{"split": "train", "path": "tiny-*.tar"}]}]
    names = [f["name"] for f in data["dataset_info"]["features"]]
    assert names == ["__key__", "__url__", "json", *card.IMAGE_EXTENSIONS]
    assert data["dataset_info"]["splits"][0]["num_examples"] == info["manifest"]["totals"]["samples"]
    # the body carries the per-source table, licenses and citations
    text = loaded.text
    for needle in ("| TextVQA (`textvqa`) | 1 | 1 |", "`malformed_json` | 1 | gqa 1",
                   "@inproceedings{guo2025crop", "@article{shao2024visualcot", "@inproceedings{liu2023llava",
                   "@inproceedings{singh2019textvqa", "@article{liu2023vsr", "@inproceedings{lin2014coco",
                   "Please identify the region that can help you answer the question better.", "`2 1 5 2.`"):
        assert needle in text, needle


def test_declared_features_round_trip_through_yaml(built):
    from datasets import Features

    _, path, _ = built
    front = yaml.safe_load(path.read_text(encoding="utf-8").split("---\n")[1])
    assert Features._from_yaml_list(front["dataset_info"]["features"]) == card.card_features()


def test_load_dataset_reads_every_field_as_declared(built, tmp_path):
    from datasets import load_dataset
    from PIL import Image

    folder, _, info = built
    ds = load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.features == card.card_features()
    assert len(ds) == len(info["records"])
    by_key = {r["key"]: (r, ext, data) for r, ext, data in info["samples"]}
    seen_ext = set()
    for row in ds:
        rec, ext, data = by_key[row["__key__"]]
        assert row["json"] == rec  # every field, nulls included, equal to what was written
        for col in card.IMAGE_EXTENSIONS:
            if col == ext:
                assert isinstance(row[col], Image.Image)
                expect = Image.open(io.BytesIO(data))
                assert row[col].size == expect.size
                assert row[col].convert("RGB").getpixel((5, 5)) == expect.convert("RGB").getpixel((5, 5))
                seen_ext.add(col)
            else:
                assert row[col] is None, (row["__key__"], col)
    assert seen_ext == {"jpg", "png"}
    text_only = [r for r in ds if r["json"]["image"] is None]
    assert len(text_only) == 1 and text_only[0]["json"]["region_blocks"] is None


def test_without_declared_features_mixed_members_fail(built, tmp_path):
    """Why the card declares features: inference over mixed members is refused by datasets."""
    import shutil

    from datasets import load_dataset

    folder, _, _ = built
    bare = tmp_path / "bare"
    bare.mkdir()
    for tar in folder.glob("*.tar"):
        shutil.copy(tar, bare / tar.name)
    with pytest.raises(ValueError, match="same prefix or the same types"):
        load_dataset(str(bare), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("n,label", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (410_000, "100K<n<1M"),
                                     (610_000, "100K<n<1M"), (1_000_000, "1M<n<10M"), (10**10, "n>1B")])
def test_size_category(n, label):
    assert card.size_category(n) == label


def test_cli_rewrites_card_from_folder(tmp_path, capsys):
    from crop.cli import main

    tinyshards.make_dataset(tmp_path, shards=1)
    assert not (tmp_path / "README.md").exists()
    assert main(["card", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "README.md")
    assert "configs:" in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_cli_names_missing_manifest(tmp_path, capsys):
    from crop.cli import main

    assert main(["card", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().out


def test_region_area_rows_bucket_counts():
    rows = card.region_area_rows({"regions_by_area_blocks": {"1": 3, "4": 1, "64": 2, "20": 4}})
    counts = {r[0]: r[1] for r in rows}
    assert counts == {"1": 3, "2-4": 1, "5-9": 0, "10-16": 0, "17-32": 4, "33-63": 0, "64": 2}
    assert sum(counts.values()) == 10


def test_card_cites_every_source_it_uses():
    stats = {"per_source": {s: 1 for s in card.SOURCES}}
    manifest = {"name": "all", "totals": {"samples": 13, "shards": 1, "bytes": 1, "per_source": {}, "per_kind": {}}}
    text = card.render_card(manifest, stats, {"name": "all", "seed": 1, "grid_size": 8})
    for source, (_, _, _, keys) in card.SOURCES.items():
        for key in keys:
            assert "{" + key + "," in text, (source, key)
    bib = text.split("```bibtex\n")[1].split("```")[0]
    assert bib.count("@") == len(card._BIB)
    json.dumps(card.card_front_matter(manifest, stats, {}))  # front matter is plain data


def test_streaming_load_keeps_declared_features(built):
    from datasets import load_dataset

    folder, _, info = built
    ds = load_dataset(str(folder), split="train", streaming=True)
    assert ds.features == card.card_features()
    rows = {r["__key__"]: r for r in ds}
    assert set(rows) == {r["key"] for r in info["records"]}
    for rec, ext, _ in info["samples"]:
        row = rows[rec["key"]]
        assert row["json"] == rec
        assert [c for c in card.IMAGE_EXTENSIONS if row[c] is not None] == ([ext] if ext else [])


def test_write_card_to_fsspec_url(built):
    import fsspec

    _, path, info = built
    url = card.write_card("memory://crop-card-test/ds", info["manifest"], info["stats"], info["recipe"])
    assert url == "memory://crop-card-test/ds/README.md"
    with fsspec.open(url, "r", encoding="utf-8") as f:
        assert f.read() == path.read_text(encoding="utf-8")


def test_docs_list_exactly_the_image_columns_of_the_contract():
    """docs/dataset_card.md's column table must name the extensions the card declares, no more."""
    import re
    from pathlib import Path

    from crop.contract import IMAGE_MEMBER_EXTS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "dataset_card.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `jpg`"))
    assert tuple(re.findall(r"`(\w+)`", row.split("|")[1])) == IMAGE_MEMBER_EXTS
