"""`udit push --repo-id ORG/NAME DIR`: upload an export folder to the Hugging Face Hub.

The folder is checked first (the same checks with --dry-run, which uploads nothing and lists the
files): a DiTPipeline folder (model_index.json) or a single model (config.json), weights only as
safetensors, and a README.md model card with YAML front matter.
"""

import argparse
import re
import sys
from pathlib import Path

from udit.cli import add_dry_run
from udit.errors import BadValueError, command_main
from udit.export.cli import PICKLE_SUFFIXES

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
INDEX_FILES = ("model_index.json", "config.json")


def folder_problems(folder: Path) -> list[str]:
    """Why `folder` is not a shareable export; [] when it is."""
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = []
    if not any((folder / name).is_file() for name in INDEX_FILES):
        problems.append(f"neither {' nor '.join(INDEX_FILES)} (not a diffusers folder)")
    files = [p for p in folder.rglob("*") if p.is_file()]
    pickles = [p.relative_to(folder) for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        problems.append(f"pickle weights {', '.join(map(str, pickles[:3]))} (safetensors only)")
    if not any(p.suffix == ".safetensors" for p in files):
        problems.append("no .safetensors weights")
    card = folder / "README.md"
    if not card.is_file() or not card.read_text(encoding="utf-8", errors="replace").startswith(
        "---\n"
    ):
        problems.append("no README.md model card with YAML front matter (`udit export` writes one)")
    return problems


def check_folder(folder: Path) -> list[Path]:
    """The files to upload (relative), after refusing a folder that is not a clean export."""
    problems = folder_problems(folder)
    if problems:
        raise BadValueError(f"{folder}: {'; '.join(problems)}; export it with `udit export`")
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def push(*, folder: Path, repo_id: str, private: bool = False, dry_run: bool = False) -> list:
    """Upload `folder` to the model repo `repo_id` (created if needed); -> the file list."""
    if not REPO_ID.match(repo_id):
        raise BadValueError(f"--repo-id {repo_id!r} is not ORG/NAME (letters, digits, . _ -)")
    files = check_folder(folder)
    if dry_run:
        return files
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message="udit export",
    )
    return files


@command_main("udit push")
def main(argv: list[str] | None = None) -> int:
    """`udit push --repo-id ORG/NAME DIR`: upload an export (--dry-run: check and list only)."""
    p = argparse.ArgumentParser(prog="udit push", description=main.__doc__)
    p.add_argument("folder", type=Path, help="a folder `udit export` wrote")
    p.add_argument("--repo-id", required=True, help="Hub model repo, ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repo private")
    add_dry_run(p)
    args = p.parse_args(argv)
    files = push(
        folder=args.folder, repo_id=args.repo_id, private=args.private, dry_run=args.dry_run
    )
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(files)} files to {args.repo_id}:")
    for name in files:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
