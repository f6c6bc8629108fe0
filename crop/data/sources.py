"""Where shards come from: paths, URLs, globs, brace ranges, folders and manifests, with counts.

:func:`resolve_shards` turns what a user passes into a list of :class:`ShardRef` (URL, file name,
sample count). Counts come from ``manifest.json`` or a shard's ``.stats.json``; only when neither
exists is the shard streamed once to count its samples (as :func:`crop.data.safety
.iter_shard_samples` would index them). :func:`open_url` opens local files unbuffered and
everything else through fsspec or webdataset's ``gopen``. Split out of :mod:`crop.data.stream`,
which plans epochs over these refs.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from typing import IO, Iterator, Sequence
from urllib.parse import urlparse

from crop.data.safety import count_sample_runs
from crop.data.tar_headers import FastTarInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardRef:
    url: str        # local path or URL, as opened
    name: str       # file name, e.g. demo-000003.tar
    samples: int    # sample (= json member) count


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # one letter: a Windows drive


def _local_path(url: str) -> str:
    return urlparse(url).path if url.startswith("file://") else url


def local_path(url: str) -> str | None:
    """The file system path of a local shard URL (plain path or ``file://``), else None."""
    return _local_path(url) if _is_local(url) else None


def open_url(url: str) -> IO[bytes]:
    """Open a shard/manifest for reading: local files directly, ``pipe:``/``ais:`` etc. through
    webdataset's ``gopen``, every other scheme (s3, gs, hf, http(s), memory, ...) through fsspec."""
    if _is_local(url):
        # unbuffered: tarfile's stream reader buffers itself; a second buffer only adds copies
        return open(_local_path(url), "rb", buffering=0)
    scheme = urlparse(url).scheme
    from webdataset import gopen

    if scheme in ("pipe", "ais", "htgs"):
        return gopen.gopen(url, "rb")
    try:
        import fsspec

        return fsspec.open(url, "rb").open()
    except (ImportError, ValueError):  # fsspec lacks the scheme or its backend package
        return gopen.gopen(url, "rb")


def _join(base_url: str, name: str) -> str:
    if os.path.basename(name) != name or name in ("", ".", ".."):
        raise ValueError(f"manifest shard name {name!r} is not a plain file name")
    if _is_local(base_url):
        return os.path.join(os.path.dirname(_local_path(base_url)), name)
    return base_url.rsplit("/", 1)[0] + "/" + name


def _from_manifest(url: str) -> list[ShardRef]:
    with open_url(url) as f:
        manifest = json.load(f)
    try:
        entries = [(e["shard"], int(e["samples"])) for e in manifest["shards"]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{url}: not a CROP manifest (shards[].shard/samples): {e!r}") from e
    return [ShardRef(_join(url, name), name, n) for name, n in entries]


def count_samples(url: str) -> int:
    """Samples in one shard: its ``.stats.json`` beside it if readable, else a scan of the names."""
    if url.endswith(".tar"):
        try:
            with open_url(url[:-4] + ".stats.json") as f:
                return int(json.load(f)["samples"])
        except Exception:  # noqa: BLE001 - absent/unreadable (remote backends raise their own types)
            pass
    if not _is_local(url):
        log.warning("%s: no manifest or stats file; streaming the whole shard to count it", url)
    try:
        with open_url(url) as f, tarfile.open(fileobj=f, mode="r|*", tarinfo=FastTarInfo) as tar:
            return count_sample_runs(info.name for info in _headers(tar) if info.isreg())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{url}: cannot count the shard's samples (no manifest/stats): {e!r}") from e


def _headers(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """A streaming TarFile's headers, without keeping them all in ``tar.members``."""
    for info in tar:
        tar.members.clear()
        yield info


def _expand(src: str) -> list[str]:
    import braceexpand

    out: list[str] = []
    for item in braceexpand.braceexpand(src):
        before = len(out)
        if not glob.has_magic(item):
            out.append(item)
        elif _is_local(item):
            out.extend(sorted(glob.glob(_local_path(item))))
        else:
            import fsspec

            fs, _, paths = fsspec.core.get_fs_token_paths(item)
            out.extend(sorted(fs.unstrip_protocol(p) for p in paths))
        if len(out) == before:
            raise FileNotFoundError(f"shard pattern {item!r} matches nothing")
    return out


def resolve_shards(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[ShardRef]:
    """Shard list with counts from paths, URLs, globs, ``{a..b}`` braces, folders or manifests."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    refs: list[ShardRef] = []
    for src in map(os.fspath, sources):
        for url in _expand(src):
            if url.endswith(".json"):
                refs.extend(_from_manifest(url))
            elif _is_local(url) and os.path.isdir(_local_path(url)):
                folder = _local_path(url)
                manifest = os.path.join(folder, "manifest.json")
                if os.path.exists(manifest):
                    refs.extend(_from_manifest(manifest))
                else:
                    tars = sorted(glob.glob(os.path.join(folder, "*.tar")))
                    if not tars:
                        raise FileNotFoundError(f"{folder}: no manifest.json and no *.tar")
                    refs.extend(ShardRef(t, os.path.basename(t), count_samples(t)) for t in tars)
            else:
                if _is_local(url) and not os.path.exists(_local_path(url)):
                    what = "shard" if url.endswith((".tar", ".tar.gz", ".tgz")) else "shard folder or file"
                    raise FileNotFoundError(f"{url}: no such {what}")
                refs.append(ShardRef(url, url.rsplit("/", 1)[-1], count_samples(url)))
    if not refs:
        raise ValueError(f"no shards in {list(sources)!r}")
    seen: set[str] = set()
    for r in refs:
        if r.url in seen:
            raise ValueError(f"shard {r.url} is listed twice")
        seen.add(r.url)
    return refs
