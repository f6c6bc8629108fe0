"""``crop show``: render shard samples as PNG pictures (grid, region, boxes, caption).

Shards are read through :mod:`crop.data.safety` (member-name rules, no pickle, pixel cap), so a
hostile shard cannot make ``show`` execute code or decode a decompression bomb.
"""

from __future__ import annotations

import glob
import os
from typing import Iterable, Iterator

from PIL import Image

from crop.viz.draw import render_sample


def shard_paths(targets: Iterable[str]) -> list[str]:
    """Shard files named by ``targets``: ``.tar`` files, folders (their ``*.tar``) or globs."""
    paths: list[str] = []
    for t in targets:
        if os.path.isdir(t):
            found = sorted(glob.glob(os.path.join(t, "*.tar")))
        elif any(c in t for c in "*?["):
            found = sorted(glob.glob(t))
        else:
            found = [t] if os.path.isfile(t) else []
        if not found:
            raise FileNotFoundError(f"no shards at {t!r} (expected a .tar file, a folder of them or a glob)")
        paths += found
    return paths


def iter_samples(paths: Iterable[str], on_error: str = "skip",
                 skipped: list[tuple[str, str]] | None = None) -> Iterator[tuple[dict, bytes | None]]:
    """``(record, image bytes or None)`` for every sample of the shards, in order.

    A shard that cannot be read to its end (truncated, corrupt tar header, unreadable file) is
    left at the failure: the samples read before it are kept, the rest of that shard is skipped,
    ``(shard name, reason)`` is appended to ``skipped`` and the next shard is read. A picture
    tool should show what it can of a damaged dataset and name the damage, not stop at it
    (``crop validate`` is the tool that judges the whole dataset).
    """
    import tarfile
    import zlib

    from crop.data.safety import ErrorPolicy, decode_json, iter_shard_samples

    policy = ErrorPolicy(on_error)
    for path in paths:
        try:
            with open(path, "rb") as f:
                for raw in iter_shard_samples(f, os.path.basename(path), policy):
                    yield decode_json(raw.json_bytes, f"{path}:{raw.key}.json"), raw.image_bytes
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            if skipped is None:
                raise
            skipped.append((os.path.basename(path), reason))


def picture(record: dict, image_bytes: bytes | None, *, width: int = 512,
            band: tuple[int, int, int] | None = None) -> Image.Image:
    """Decode the image (pixel-capped) and draw the sample."""
    from crop.data.safety import decode_image

    image = decode_image(image_bytes, where=record.get("key", "image")) if image_bytes else None
    return render_sample(image, record, width=width, band=band)


def show(targets: Iterable[str], out_dir: str, n: int = 16, keys: Iterable[str] | None = None,
         width: int = 512, skipped: list[tuple[str, str]] | None = None) -> list[str]:
    """Write ``<out_dir>/<key>.png`` for the first ``n`` samples (or exactly ``keys``); return paths.

    Damaged shards are skipped and named in ``skipped`` (see :func:`iter_samples`)."""
    wanted = set(keys or ())
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []
    skipped = [] if skipped is None else skipped
    for record, image_bytes in iter_samples(shard_paths(targets), skipped=skipped):
        if wanted and record.get("key") not in wanted:
            continue
        path = os.path.join(out_dir, f"{record['key']}.png")
        picture(record, image_bytes, width=width).save(path)
        written.append(path)
        if wanted:
            wanted.discard(record["key"])
            if not wanted:
                break
        elif len(written) >= n:
            break
    if wanted:
        raise KeyError(f"keys not found in the shards: {', '.join(sorted(wanted))}")
    return written


def add_arguments(parser) -> None:
    parser.add_argument("targets", nargs="+", help="shard .tar files, dataset folders or globs")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument("--n", type=int, default=16, help="how many samples to render (default 16)")
    parser.add_argument("--keys", nargs="+", default=None, help="render exactly these sample keys")
    parser.add_argument("--width", type=int, default=512, help="picture width in pixels (default 512)")


def run(args) -> int:
    if args.n < 1 or args.width < 64:
        print("crop show: --n must be >= 1 and --width >= 64")
        return 2
    import sys

    skipped: list[tuple[str, str]] = []
    try:
        written = show(args.targets, args.out, n=args.n, keys=args.keys, width=args.width, skipped=skipped)
    except (FileNotFoundError, KeyError) as e:
        print(f"crop show: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    finally:
        for shard, reason in skipped:
            print(f"crop show: skipped the rest of damaged shard {shard}: {reason}", file=sys.stderr)
    for path in written:
        print(path)
    return 0
