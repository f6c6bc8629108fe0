"""``crop publish``: upload a built dataset folder to a Hugging Face Hub dataset repository.

What goes up is planned from ``manifest.json``, never from a directory listing: the shards it
names and their ``.stats.json`` markers, ``manifest.json``, ``stats.json``, ``rejects.jsonl`` and
the card ``README.md``. The plan checks each shard's size against the manifest first, so a
half-written or stale folder is refused before any network traffic. ``--dry-run`` prints the plan
and touches nothing; ``--export DIR`` writes exactly the files that would be uploaded into ``DIR``
(to inspect, or to upload by other means), and needs no network or token.

The upload resumes when re-run: the uploader is ``HfApi.upload_large_folder`` where it exists
(huggingface_hub 0.25 to 1.x), else ``HfApi.upload_folder``, which in 2.x streams multi-commit
batches through xet and skips what is already on the Hub. The token comes from ``HF_TOKEN`` or
``hf auth login`` through huggingface_hub itself and is never printed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

REQUIRED = ("manifest.json", "README.md")
OPTIONAL = ("stats.json", "rejects.jsonl")


class PublishError(ValueError):
    """The folder cannot be published as it is; the message says what to fix."""


@dataclass(frozen=True)
class Upload:
    local: str          # absolute local path
    path_in_repo: str   # path inside the dataset repository
    size: int           # bytes


def plan_upload(folder: str) -> list[Upload]:
    """Files to upload, in a stable order; raises :class:`PublishError` naming what is wrong."""
    folder = os.path.abspath(folder)
    for name in REQUIRED:
        if not os.path.isfile(os.path.join(folder, name)):
            hint = " (write it with `crop card <folder>`)" if name == "README.md" else ""
            raise PublishError(f"{folder}: {name} is missing{hint}")
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    names = list(REQUIRED) + [n for n in OPTIONAL if os.path.isfile(os.path.join(folder, n))]
    problems = []
    for entry in manifest.get("shards", []):
        shard = entry["shard"]
        path = os.path.join(folder, shard)
        if not os.path.isfile(path):
            problems.append(f"{shard}: listed in manifest.json but missing")
            continue
        if os.path.getsize(path) != entry["bytes"]:
            problems.append(f"{shard}: {os.path.getsize(path)} bytes on disk, manifest says {entry['bytes']}")
        names.append(shard)
        marker = shard[: -len(".tar")] + ".stats.json"
        if os.path.isfile(os.path.join(folder, marker)):
            names.append(marker)
    if problems:
        raise PublishError(f"{folder}: shards do not match manifest.json:\n  " + "\n  ".join(problems))
    if not manifest.get("shards"):
        raise PublishError(f"{folder}: manifest.json lists no shards")
    return [Upload(os.path.join(folder, n), n, os.path.getsize(os.path.join(folder, n))) for n in names]


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def describe_plan(plan: list[Upload], repo_id: str, revision: str | None, private: bool) -> str:
    where = f"https://huggingface.co/datasets/{repo_id}" + (f" @ {revision}" if revision else "")
    lines = [f"target: {where} ({'private' if private else 'public'} dataset repo)"]
    width = max(len(u.local) for u in plan)
    lines += [f"  {u.local:<{width}} -> {u.path_in_repo}  ({_human(u.size)})" for u in plan]
    lines.append(f"{len(plan)} files, {_human(sum(u.size for u in plan))} in all")
    return "\n".join(lines)


def export(plan: list[Upload], out_dir: str) -> str:
    """Copy exactly the planned files to ``out_dir`` (created; must not exist or be empty)."""
    import shutil

    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise PublishError(f"{out_dir}: exists and is not an empty folder; choose a new --export folder")
    os.makedirs(out_dir, exist_ok=True)
    for u in plan:
        dest = os.path.join(out_dir, u.path_in_repo)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(u.local, dest)
    return out_dir


def network_errors() -> tuple[type[BaseException], ...]:
    """Exception types of a failed Hub request, for the HTTP stack of the installed huggingface_hub
    (requests in 0.x, httpx in 1.x, httpx2 in 2.x): each is caught only where it is importable."""
    import importlib

    found: list[type[BaseException]] = [OSError]
    for module, name in (("requests", "RequestException"), ("httpx", "HTTPError"), ("httpx2", "HTTPError"),
                         ("huggingface_hub.errors", "HfHubHTTPError")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def upload(plan: list[Upload], repo_id: str, *, revision: str | None = None, private: bool = False,
           api=None) -> None:
    """Upload the planned files (all from one folder) to the dataset repo ``repo_id``."""
    from huggingface_hub import HfApi, get_token

    if get_token() is None:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = api or HfApi()
    folder = os.path.dirname(plan[0].local)
    patterns = [u.path_in_repo for u in plan]  # exact names: nothing else in the folder goes up
    if hasattr(api, "upload_large_folder"):  # huggingface_hub 0.25 - 1.x: resumable, creates the repo
        api.upload_large_folder(repo_id=repo_id, folder_path=folder, repo_type="dataset", revision=revision,
                                private=private, allow_patterns=patterns)
        return
    # huggingface_hub 2.x: upload_folder itself resumes (xet, multi-commit); it does not create repos.
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="dataset", revision=revision,
                      allow_patterns=patterns, commit_message=f"Upload CROP dataset ({len(plan)} files)")


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="built dataset folder (manifest.json, README.md, shards)")
    parser.add_argument("--repo-id", help="Hub dataset repository, ORG/NAME (required unless --export)")
    parser.add_argument("--dry-run", action="store_true", help="list what would go where; no network")
    parser.add_argument("--export", metavar="DIR", default=None,
                        help="write exactly the files that would be uploaded into DIR (new or empty); no network")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to upload to (created if missing)")


def run(args) -> int:
    import sys

    if args.export is None and args.repo_id is None:
        print("crop publish: give --repo-id ORG/NAME (or --export DIR to write the files locally)", file=sys.stderr)
        return 2
    if args.repo_id is not None and (args.repo_id.count("/") != 1 or not all(args.repo_id.split("/"))):
        print(f"crop publish: --repo-id must be ORG/NAME, got {args.repo_id!r}", file=sys.stderr)
        return 2
    try:
        plan = plan_upload(args.folder)
    except PublishError as e:
        print(f"crop publish: {e}", file=sys.stderr)
        return 2
    if args.export is not None:
        try:
            export(plan, args.export)
        except PublishError as e:
            print(f"crop publish: {e}", file=sys.stderr)
            return 2
        print(f"exported {len(plan)} files, {_human(sum(u.size for u in plan))}, to {args.export} "
              "(exactly what would be uploaded)")
        return 0
    print(describe_plan(plan, args.repo_id, args.revision, args.private))
    if args.dry_run:
        print("dry run: nothing uploaded")
        return 0
    try:
        upload(plan, args.repo_id, revision=args.revision, private=args.private)
    except PublishError as e:
        print(f"crop publish: {e}", file=sys.stderr)
        return 2
    except network_errors() as e:
        cause = " ".join(str(e).split()) or type(e).__name__
        print(f"crop publish: upload to {args.repo_id} failed ({type(e).__name__}: {cause}); "
              "check the network and rerun: the upload resumes", file=sys.stderr)
        return 1
    print(f"uploaded to https://huggingface.co/datasets/{args.repo_id}")
    return 0
