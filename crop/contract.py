"""The sample contract: constructors that always emit every key, and JSON Schema validation.

The schemas live in ``schemas/*.schema.json`` (shipped as the ``schemas`` package). Readers and
tests validate real outputs against them; the pipeline builds records only through
:func:`region_record` and :func:`instruction_record`, so region and instruction samples can never
drift apart in their key sets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any, Mapping, Sequence

SCHEMA_VERSION = 2
"""Version of the sample contract new records carry. 2 (issue 21) added ``regions_blocks``."""
READABLE_SCHEMA_VERSIONS = (1, 2)
"""Versions readers accept: a version-1 record (no ``regions_blocks`` key) is still valid; read its
regions with :func:`regions_of`."""
_KEY_OK = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def make_key(source: str, source_id: str) -> str:
    """Stable, dot-free sample key from the source and the source's own id.

    ``<source>-<first 20 hex of sha256(source_id)>``: independent of worker order and run, and
    safe as a WebDataset key (no dots, no slashes).
    """
    digest = hashlib.sha256(source_id.encode("utf-8")).hexdigest()[:20]
    key = f"{source}-{digest}"
    if not _KEY_OK.match(key):
        raise ValueError(f"source {source!r} gives an invalid key {key!r}")
    return key


def _record(**fields: Any) -> dict:
    rec = {
        "schema_version": SCHEMA_VERSION,
        "key": None,
        "kind": None,
        "source": None,
        "source_id": None,
        "source_file": None,
        "image": None,
        "image_width": None,
        "image_height": None,
        "conversations": None,
        "question": None,
        "answer": None,
        "boxes_xyxy_px": None,
        "union_box_xyxy_px": None,
        "region_blocks": None,
        "regions_blocks": None,
        "grid_size": None,
    }
    unknown = set(fields) - set(rec)
    if unknown:
        raise TypeError(f"unknown sample fields: {sorted(unknown)}")
    rec.update(fields)
    return rec


def region_record(*, source: str, source_id: str, source_file: str, image: str, image_width: int,
                  image_height: int, question: str, answer: str,
                  boxes_xyxy_px: Sequence[Sequence[float]], union_box_xyxy_px: Sequence[float],
                  region_blocks: Sequence[int], grid_size: int, trailing_period: bool | None = None,
                  prompt: str | None = None, target: str | None = None,
                  regions_blocks: Sequence[Sequence[int]] | None = None) -> dict:
    """A region sample. The conversation is derived from ``question`` and the regions with the
    paper's template (``crop.formatting``); pass ``prompt``/``target`` only to override it.

    ``regions_blocks`` (issue 21, the ``multi_box: regions`` policy): the question's disjoint
    block regions in reading order (:func:`crop.geometry.multi_region.boxes_px_to_regions`);
    ``region_blocks`` must then be their bounding rectangle (kept for readers of one region).
    Default: the one region ``[region_blocks]``, whose target is the single-region template.
    """
    from crop import formatting
    from crop.geometry.multi_region import bounding_region

    regions = [[int(v) for v in region_blocks]] if regions_blocks is None else \
        [[int(v) for v in r] for r in regions_blocks]
    if not regions:
        raise ValueError("regions_blocks is empty: give at least one region (or leave it None)")
    if list(bounding_region(regions)) != [int(v) for v in region_blocks]:
        raise ValueError(f"region_blocks {list(region_blocks)} is not the bounding rectangle of "
                         f"regions_blocks {regions}")
    if prompt is None:
        prompt = formatting.render_region_prompt(question)
    if target is None:
        period = formatting.TRAILING_PERIOD if trailing_period is None else trailing_period
        target = formatting.format_regions(regions, grid_size, trailing_period=period)
    return _record(
        key=make_key(source, source_id), kind="region", source=source, source_id=source_id,
        source_file=source_file, image=image, image_width=image_width, image_height=image_height,
        conversations=[{"from": "human", "value": prompt}, {"from": "gpt", "value": target}],
        question=question, answer=answer,
        boxes_xyxy_px=[[float(v) for v in b] for b in boxes_xyxy_px],
        union_box_xyxy_px=[float(v) for v in union_box_xyxy_px],
        region_blocks=[int(v) for v in region_blocks], regions_blocks=regions, grid_size=grid_size,
    )


def regions_of(record: Mapping) -> list[list[int]] | None:
    """The block regions of a record, for every schema version: ``regions_blocks`` when present
    (version 2), else ``[region_blocks]`` (version 1 records, union / first / largest policies);
    None for instruction records."""
    regions = record.get("regions_blocks")
    if regions:
        return [list(r) for r in regions]
    single = record.get("region_blocks")
    return None if single is None else [list(single)]


def instruction_record(*, source_id: str, source_file: str, image: str | None,
                       image_width: int | None, image_height: int | None,
                       conversations: Sequence[Mapping[str, str]]) -> dict:
    return _record(
        key=make_key("llava", source_id), kind="instruction", source="llava", source_id=source_id,
        source_file=source_file, image=image, image_width=image_width, image_height=image_height,
        conversations=[{"from": c["from"], "value": c["value"]} for c in conversations],
    )


@functools.lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema
    from referencing import Registry, Resource

    import schemas

    resources = []
    for other in schemas.NAMES:
        doc = json.loads(schemas.path(other).read_text(encoding="utf-8"))
        resources.append((doc["$id"], Resource.from_contents(doc)))
    registry = Registry().with_resources(resources)
    doc = json.loads(schemas.path(name).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    return cls(doc, registry=registry)


class ContractError(ValueError):
    """A record does not satisfy its schema; the message lists every violation with its path."""


def validate(record: Mapping, name: str = "sample") -> None:
    """Raise :class:`ContractError` if ``record`` violates ``schemas/<name>.schema.json``."""
    errors = sorted(_validator(name).iter_errors(record), key=lambda e: list(e.absolute_path))
    if errors:
        where = record.get("key") or record.get("shard") or record.get("name") or "record"
        lines = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:10]]
        raise ContractError(f"{name} {where!s} violates the contract:\n  " + "\n  ".join(lines))


# One table of the sample record's column types, from which both the ``datasets.Features`` and the
# dataset card's YAML are derived. Types: a datasets dtype, "conversations" (list of from/value
# structs), "list:<dtype>" and "list2:<dtype>" (list of lists).
SAMPLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("schema_version", "int32"), ("key", "string"), ("kind", "string"), ("source", "string"),
    ("source_id", "string"), ("source_file", "string"), ("image", "string"),
    ("image_width", "int32"), ("image_height", "int32"), ("conversations", "conversations"),
    ("question", "string"), ("answer", "string"), ("boxes_xyxy_px", "list2:float64"),
    ("union_box_xyxy_px", "list:float64"), ("region_blocks", "list:int32"),
    ("regions_blocks", "list2:int32"), ("grid_size", "int32"),
)


def sample_features():
    """``datasets.Features`` of the sample record, declared so no field is inferred away."""
    from datasets import Features, List, Value

    def feature(kind: str):
        if kind == "conversations":
            return List({"from": Value("string"), "value": Value("string")})
        if kind.startswith("list2:"):
            return List(List(Value(kind[6:])))
        if kind.startswith("list:"):
            return List(Value(kind[5:]))
        return Value(kind)

    return Features({name: feature(kind) for name, kind in SAMPLE_COLUMNS})


IMAGE_MEMBER_EXTS = ("jpg", "png", "webp", "gif", "bmp")
"""Image member extensions the pipeline writes (the decoded format, not the input file name)."""


def shard_features():
    """``datasets.Features`` of a shard row as the ``webdataset`` builder yields it.

    Pass it as ``features=`` (or declare it in the dataset card): inference from the first rows
    fails on our shards because rows differ in members (jpg vs png vs text-only), and declared
    columns that a row lacks come back as None.
    """
    from datasets import Features, Image, Value

    cols = {"__key__": Value("string"), "__url__": Value("string"), "json": sample_features()}
    cols.update({ext: Image() for ext in IMAGE_MEMBER_EXTS})
    return Features(cols)


def shard_features_yaml() -> list[dict]:
    """The ``dataset_info.features`` YAML list of a shard row, without importing ``datasets``.

    Equal to ``shard_features()._to_yaml_list()`` (a test holds them together); the dataset card
    uses this so that the end of a build does not pay for importing ``datasets``.
    """
    def column(name: str, kind: str) -> dict:
        if kind == "conversations":
            return {"name": name, "list": [{"name": "from", "dtype": "string"},
                                           {"name": "value", "dtype": "string"}]}
        if kind.startswith("list2:"):
            return {"name": name, "list": {"list": kind[6:]}}
        if kind.startswith("list:"):
            return {"name": name, "list": kind[5:]}
        return {"name": name, "dtype": kind}

    return ([{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
             {"name": "json", "struct": [column(n, k) for n, k in SAMPLE_COLUMNS]}]
            + [{"name": ext, "dtype": "image"} for ext in IMAGE_MEMBER_EXTS])
