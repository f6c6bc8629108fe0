"""The dataset card ``README.md`` written beside the shards, and the ``crop card`` command.

Why the front matter declares ``dataset_info.features``: the ``datasets`` WebDataset builder makes
one column per tar member extension (``json``, ``jpg``, ``png``, ...) and, without declared
features, infers them from the first five samples and refuses archives whose samples carry
different members. Our shards mix text-only samples (no image member) with jpg and png images, so
the card declares every column: ``__key__``, ``__url__``, ``json`` (the contract record,
:func:`crop.contract.sample_features`) and one ``Image`` column per allowed image extension. A
sample fills the column of its own extension; the others are null.

The pipeline writes :func:`render_card`'s text at the end of every build through Beam's
FileSystems (so gs://, s3://, hdfs:// outputs get a card too); ``crop card <folder>`` rewrites the
card of a local or fsspec folder from its ``manifest.json`` and ``stats.json``. Pure Python: no Beam. The
per-source names, terms and citations live in :mod:`crop.data.card_sources`.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import yaml

# Tar member extensions the shards may use for images (shared/docs/formats.md); each becomes a
# column named after the extension, exactly as the datasets WebDataset builder names it.
from crop.contract import IMAGE_MEMBER_EXTS as IMAGE_EXTENSIONS  # one list, owned by the contract
from crop.data.card_sources import _BIB, SOURCES, bibtex  # noqa: F401 - the per-source tables
from crop.formatting import IMAGE_TOKEN, format_region, render_region_prompt

CARD_NAME = "README.md"
LICENSE_NAME = "crop-mixed-source-terms"

# Hugging Face size_categories buckets, upper bound exclusive.
_SIZE_BUCKETS = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                 (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B")]


def size_category(n: int) -> str:
    """Hugging Face ``size_categories`` bucket of ``n`` samples."""
    for bound, label in _SIZE_BUCKETS:
        if n < bound:
            return label
    return "n>1B"


def card_features():
    """``datasets.Features`` of the rows the WebDataset builder yields for our shards."""
    from crop.contract import shard_features

    return shard_features()


def shard_pattern(manifest: Mapping) -> str:
    """``data_files`` glob that matches this build's shards and nothing else in the folder."""
    shards = manifest.get("shards") or []
    prefix = shards[0]["shard"].rsplit("-", 1)[0] if shards else manifest["name"]
    return f"{prefix}-*.tar"


def card_front_matter(manifest: Mapping, stats: Mapping, recipe: Mapping) -> dict:
    """The YAML front matter as a plain dict (what ``DatasetCard.load(...).data`` reads back)."""
    from huggingface_hub import DatasetCardData

    from crop.contract import shard_features_yaml

    n = int(manifest["totals"]["samples"])
    data = DatasetCardData(
        license="other", license_name=LICENSE_NAME, language=["en"],
        task_categories=["visual-question-answering", "image-text-to-text"],
        size_categories=[size_category(n)], pretty_name=f"CROP region localization data ({manifest['name']})",
        tags=["crop", "visual-token-pruning", "region-localization", "webdataset"],
        configs=[{"config_name": "default", "default": True,
                  "data_files": [{"split": "train", "path": shard_pattern(manifest)}]}],
    )
    # What datasets' DatasetInfosDict.to_dataset_card_data writes, built without importing
    # datasets (~1 s at the end of every build); tests load the card back with datasets.
    data.dataset_info = {"features": shard_features_yaml(),
                         "splits": [{"name": "train", "num_bytes": 0, "num_examples": n}]}
    return data.to_dict()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


# Region area buckets in blocks on the 8x8 grid (64 = the whole image).
_AREA_BUCKETS = [(1, 1), (2, 4), (5, 9), (10, 16), (17, 32), (33, 63), (64, 64)]


def region_area_rows(stats: Mapping, grid: int = 8) -> list[list[Any]]:
    """Bucketed region sizes (blocks) with counts, shares and a text bar."""
    by_area = {int(k): int(v) for k, v in stats.get("regions_by_area_blocks", {}).items()}
    total = sum(by_area.values())
    full = grid * grid
    buckets = [(lo, hi) for lo, hi in _AREA_BUCKETS if lo <= full]
    buckets[-1] = (buckets[-1][0], full)
    rows = []
    for lo, hi in buckets:
        count = sum(v for a, v in by_area.items() if lo <= a <= hi)
        label = f"{lo}" if lo == hi else f"{lo}-{hi}"
        bar = "#" * round(30 * count / total) if total else ""
        rows.append([label, count, _pct(count, total), f"`{bar}`" if bar else ""])
    return rows


def source_rows(stats: Mapping, recipe: Mapping) -> list[list[Any]]:
    written = stats.get("per_source", {})
    total = sum(written.values())
    rec_sources = recipe.get("sources", {}) or {}
    names = sorted(set(written) | set(stats.get("read", {})) | set(rec_sources))
    rows = []
    for s in names:
        rejected = sum(stats.get("rejected_by_reason", {}).get(s, {}).values())
        cap = (rec_sources.get(s) or {}).get("cap") if s != "llava" else (recipe.get("llava") or {}).get("count")
        rows.append([SOURCES.get(s, (s,))[0] + f" (`{s}`)", stats.get("read", {}).get(s, 0), written.get(s, 0),
                     _pct(written.get(s, 0), total), "none" if cap is None else cap,
                     stats.get("capped", {}).get(s, 0), stats.get("shortfall", {}).get(s, 0), rejected])
    return rows


def reject_rows(stats: Mapping) -> list[list[Any]]:
    by_reason: dict[str, dict[str, int]] = {}
    for source, reasons in stats.get("rejected_by_reason", {}).items():
        for reason, count in reasons.items():
            by_reason.setdefault(reason, {})[source] = count
    rows = []
    for reason, per in sorted(by_reason.items(), key=lambda kv: -sum(kv[1].values())):
        detail = ", ".join(f"{s} {c}" for s, c in sorted(per.items(), key=lambda kv: -kv[1]))
        rows.append([f"`{reason}`", sum(per.values()), detail])
    return rows


# Meanings for the fields whose schema entry carries no description.
_FIELD_NOTES = {
    "schema_version": "Version of the sample contract (schemas/sample.schema.json).",
    "kind": "`region` (localization sample) or `instruction` (LLaVA sample).",
    "source": "Source dataset tag.",
    "image_width": "Original image width in pixels; null without an image.",
    "image_height": "Original image height in pixels; null without an image.",
    "conversations": "Chat turns `{from: human|gpt, value}`; for region samples the prompt and the target.",
    "question": "Question without the prompt suffix; null for instruction samples.",
    "answer": "Short answer from the source; null for instruction samples.",
    "grid_size": "Grid the region is expressed on (8 = 8x8); null for instruction samples.",
}


def _type_name(kind: str) -> str:
    """Readable type of a ``crop.contract.SAMPLE_COLUMNS`` kind."""
    if kind == "conversations":
        return "list<{from: string, value: string}>"
    if kind.startswith("list2:"):
        return f"list<list<{kind[6:]}>>"
    if kind.startswith("list:"):
        return f"list<{kind[5:]}>"
    return kind


def _field_rows() -> list[list[str]]:
    import schemas

    doc = json.loads(schemas.path("sample").read_text(encoding="utf-8"))
    from crop.contract import SAMPLE_COLUMNS

    kinds = dict(SAMPLE_COLUMNS)
    return [[f"`{name}`", f"`{_type_name(kinds[name])}`", prop.get("description") or _FIELD_NOTES.get(name, "")]
            for name, prop in doc["properties"].items()]


def _without_input_roots(recipe: Mapping) -> dict:
    """The recipe as the card shows it: which inputs were set, not where they lay on the machine
    that built the dataset (``manifest.json`` keeps the roots once, unless ``--omit-input-roots``)."""
    shown = dict(recipe)
    if isinstance(shown.get("inputs"), Mapping):
        shown["inputs"] = {k: ("set" if v else None) for k, v in shown["inputs"].items()}
    return shown


def render_card(manifest: Mapping, stats: Mapping, recipe: Mapping) -> str:
    """The whole card text: YAML front matter plus the markdown body."""
    front = yaml.safe_dump(card_front_matter(manifest, stats, recipe), sort_keys=False, allow_unicode=True)
    totals = manifest["totals"]
    n, name = int(totals["samples"]), manifest["name"]
    grid = int(recipe.get("grid_size", 8))
    example_q = "What words are on the card?"
    used = sorted(set(stats.get("per_source", {})) | set(totals.get("per_source", {})))
    cite_keys = ["guo2025crop", "shao2024visualcot"]
    for s in used or sorted(SOURCES):
        for key in SOURCES.get(s, ("", "", "", ()))[3]:
            if key not in cite_keys:
                cite_keys.append(key)
    for key in ("liu2023llava", "liu2024llava15"):
        if key not in cite_keys:
            cite_keys.append(key)
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(totals.get("per_kind", {}).items()))
    sizes = stats.get("image_sizes", {})
    boxes = stats.get("boxes", {})
    shapes = sorted(stats.get("regions_by_shape", {}).items(), key=lambda kv: -kv[1])[:10]
    per_sample = stats.get("regions_per_sample", {})
    multi = any(int(k) > 1 for k in per_sample)  # built with multi_box: regions (issue 21)
    merged = ("overlapping or touching boxes merged, the others kept as separate regions in `regions_blocks`; "
              "`region_blocks` is their bounding rectangle" if multi else "merged into their union")
    body = [
        f"# CROP region localization data: `{name}`", "",
        f"{n} samples in {totals['shards']} WebDataset shards ({totals['bytes']} bytes; {kinds}). "
        "Region samples teach a small VLM (the CROP Localization Module) to name the part of an image that "
        f"answers a question, as a block range on a {grid}x{grid} grid laid over the image; the same samples "
        "train CROP's Pre-LLM Compression module. LLaVA-1.5 instruction samples are mixed in to keep "
        "instruction following. Questions, answers and boxes come from the Visual-CoT per-source metadata; "
        "the grid regions, prompts and targets were computed by the CROP toolkit.", "",
        "## Loading", "",
        "```python\nfrom datasets import load_dataset\n"
        "ds = load_dataset(\"<this repo or folder>\", split=\"train\")\n"
        "row = ds[0]   # row['json'] is the record; the image is in row['jpg'] or row['png'] (etc.)\n```", "",
        f"Columns: `__key__`, `__url__`, `json` (the sample record) and one image column per member "
        f"extension ({', '.join(f'`{e}`' for e in IMAGE_EXTENSIONS)}). A sample fills the column of its own "
        "image type and leaves the others null; text-only instruction samples have no image. The shards also "
        "stream with `webdataset` (`<key>.json` plus `<key>.<ext>` per sample).", "",
        "### Record fields (`json`)", "", _table(["field", "type", "meaning"], _field_rows()), "",
        "## Sample template", "",
        "Human turn (region samples):", "", "```text\n" + render_region_prompt(example_q) + "\n```", "",
        "Assistant turn: `x_min y_min x_max y_max.` with 0-indexed inclusive blocks, e.g. "
        f"`{format_region((2, 1, 5, 2))}` (the paper's Figure 3 example on the 8x8 grid). "
        f"The image is referenced by `{IMAGE_TOKEN}` in the first human turn.", "",
        "## Recipe", "",
        f"Recipe `{recipe.get('name', name)}`, seed {recipe.get('seed')}, grid {grid}x{grid}, "
        f"{len(manifest.get('inputs', []))} input files (names relative to their input, sizes and sha256 "
        "in `manifest.json`; the input folders are not part of the card).", "",
        "```yaml\n" + yaml.safe_dump(json.loads(json.dumps(_without_input_roots(recipe), default=str)),
                                     sort_keys=False, allow_unicode=True).rstrip() + "\n```", "",
        "## Sources", "",
        _table(["source", "read", "written", "share", "cap", "capped", "shortfall", "rejected"],
               source_rows(stats, recipe)), "",
        "`capped`: valid records left out by the cap; `shortfall`: how far the cap exceeded the valid records.", "",
        "### Rejected records by reason", "",
        (_table(["reason", "count", "by source"], reject_rows(stats)) if reject_rows(stats) else "None."), "",
        "Every rejected record is listed with its source file, line and reason in `rejects.jsonl`.", "",
        "## Region size distribution", "",
        f"Area of the target region in blocks ({grid * grid} = the whole image).", "",
        _table(["blocks", "regions", "share", ""], region_area_rows(stats, grid)), "",
        ("Most common shapes (width x height in blocks): " + ", ".join(f"{k} ({v})" for k, v in shapes) + "."
         if shapes else ""), "",
        ("Regions per sample: " + ", ".join(f"{k} ({v})" for k, v in per_sample.items()) + "." if multi else ""),
        "",
        f"Boxes: {boxes.get('total', 0)} source boxes, {boxes.get('clipped', 0)} clipped to the image, "
        f"{boxes.get('multi_box_records', 0)} records with several boxes ({merged}, "
        f"{boxes.get('merged_away', 0)} boxes merged away). Image sizes: width {sizes.get('min_width')}-"
        f"{sizes.get('max_width')}, height {sizes.get('min_height')}-{sizes.get('max_height')} px "
        f"({sizes.get('count', 0)} images).", "",
        "## Known limitations", "",
        ("- Boxes that overlap or touch are merged into one region, and beyond the recipe's `max_regions` the "
         "closest regions are merged too, so a region can still be larger than any single box." if multi else
         "- Several boxes for one question are merged into their union, so the region can be much larger "
         "than any single box (recipe option `multi_box: regions` keeps far-apart boxes apart)."),
        "- Boxes that leave the image are clipped; a box smaller than one block still maps to a whole block, "
        "so regions are coarse for small text in documents.",
        "- Many VSR and CUB regions cover the whole image and carry little localization signal.",
        "- Per-source counts differ from the paper's Table 1 (e.g. TextVQA 73k, CUB 4k): the authors' "
        "selection is not published; this build follows the recipe above.",
        "- Boxes come from Visual-CoT and are not re-annotated; duplicates are dropped by key.",
        "- English only. Images are redistributed as found in their sources.", "",
        "## Licenses", "",
        f"The compiled set has no single license (`license: other`, `{LICENSE_NAME}`): every sample keeps "
        "the terms of its source, and the images keep the terms of their original collections. The "
        "Visual-CoT annotations are Apache-2.0 as declared on the Hugging Face dataset page "
        "`deepcs233/Visual-CoT`. Check each source before any use beyond research.", "",
        _table(["source", "terms", "where"], [[f"`{s}`", SOURCES[s][2], SOURCES[s][1]] for s in SOURCES]), "",
        "- COCO (images behind VSR, Visual7W and much of LLaVA): annotations CC BY 4.0; images under the "
        "Flickr terms of use.", "",
        "## Citation", "",
        "Please cite CROP, Visual-CoT, LLaVA and the sources you use:", "",
        "```bibtex\n" + "\n\n".join(bibtex(k) for k in cite_keys) + "\n```", "",
    ]
    return "---\n" + front + "---\n\n" + "\n".join(body).replace("\n\n\n", "\n\n")


def write_card(out_dir: str, manifest: dict, stats: dict, recipe: dict) -> str:
    """Write ``<out_dir>/README.md`` (a local folder or any fsspec URL) and return its path."""
    import os

    import fsspec

    text = render_card(manifest, stats, recipe)
    path = out_dir.rstrip("/") + "/" + CARD_NAME if "://" in out_dir else os.path.join(out_dir, CARD_NAME)
    with fsspec.open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="built dataset folder holding manifest.json and stats.json")
    parser.add_argument("--print", action="store_true", help="print the card instead of writing README.md")


def run(args) -> int:
    import fsspec

    def load(name: str) -> dict:
        with fsspec.open(args.folder.rstrip("/") + "/" + name, "r", encoding="utf-8") as f:
            return json.load(f)

    try:
        manifest, stats = load("manifest.json"), load("stats.json")
    except FileNotFoundError as e:
        print(f"crop card: {e.filename or e} not found; is {args.folder!r} a built dataset folder?")
        return 2
    recipe = manifest.get("recipe") or {}
    if args.print:
        print(render_card(manifest, stats, recipe))
        return 0
    print(write_card(args.folder, manifest, stats, recipe))
    return 0
