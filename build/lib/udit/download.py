"""`udit download --configfile config/paper.yaml`: fetch every external input a config names.

Reference batches and the Inception weights by their public URLs (udit.inputs); the VAE and
released checkpoints through huggingface_hub, listing the repository's real file names at
run time. Each downloaded file gets `<file>.provenance.json` next to it (URL or repo + file +
revision, bytes, SHA-256). Files already present and valid are skipped. Offline (no route to
the hosts, or HF_HUB_OFFLINE=1) it fails at once with the list of what is missing and where
to get each: no request is tried that could hang.
"""

import argparse
import datetime
import hashlib
import json
import re
import shutil
import socket
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from udit import experiments as ex
from udit import inputs, outputs
from udit.errors import UserError, command_main
from udit.io import atomic_open, atomic_write_json

PROBE_TIMEOUT_S = 3.0
HF_REPO_URL = re.compile(r"https://huggingface\.co/([^/\s]+/[^/\s]+)")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin")


def _reachable(url: str) -> bool:
    from udit.data.vae import _hub_is_reachable

    if "huggingface.co" in url:
        return _hub_is_reachable(PROBE_TIMEOUT_S)
    host = urlparse(url)
    try:
        socket.create_connection((host.hostname, host.port or 443), PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def wanted(config: dict) -> list[dict]:
    """Every external file of the config that is missing or malformed: path, what, source."""
    out = []
    for name, spec in config["datasets"].items():
        ref = spec.get("reference")
        url = inputs.REFERENCE_URLS.get(spec["image_size"])
        if ref and url and inputs.reference_problem(ref, image_size=spec["image_size"]):
            out.append({"path": ref, "what": f"reference batch of {name}", "url": url})
        vae = spec.get("vae")
        if vae and vae != "tiny" and not Path(vae).exists() and inputs.vae_problem(vae):
            out.append({"path": vae, "what": f"VAE of {name}", "repo": vae})
    weights = config["inception"]["weights"]
    if weights != "standin" and inputs.inception_problem(weights):
        out.append({"path": weights, "what": "Inception weights", "url": inputs.INCEPTION_URL})
    for rel in ex.resolve_released(config).values():
        if not Path(rel.path).is_file():
            repo = HF_REPO_URL.match(rel.url)
            item = {"path": rel.path, "what": f"released checkpoint {rel.id}", "model": rel.model}
            item.update({"repo": repo.group(1)} if repo else {"url": rel.url})
            out.append(item)
    return out


def _source(item: dict) -> str:
    return item.get("url") or f"huggingface.co/{item['repo']}"


def fetch_url(url: str, path: Path) -> dict:
    """Stream `url` to `path` atomically, hashing on the way."""
    digest, size = hashlib.sha256(), 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response, atomic_open(path, "wb") as f:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            f.write(chunk)
    return {"url": url, "bytes": size, "sha256": digest.hexdigest()}


def pick_checkpoint(files: list[str], model: str) -> str:
    """The repository file of `model` ('U-DiT-B' -> the one file naming it), from the real
    listing; several or none is an error that shows the listing."""
    want = re.sub(r"[^a-z0-9]", "", model.lower())
    hits = [
        f
        for f in files
        if f.endswith(CHECKPOINT_SUFFIXES) and want in re.sub(r"[^a-z0-9]", "", f.lower())
    ]
    exact = [f for f in hits if re.sub(r"[^a-z0-9]", "", Path(f).stem.lower()) == want]
    hits = exact or hits
    if len(hits) != 1:
        raise UserError(
            f"cannot tell which file of the repository is {model}: "
            f"{hits or 'none matches'}; files: {files}"
        )
    return hits[0]


def fetch_hub(item: dict) -> dict:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    api = HfApi()
    info = api.model_info(item["repo"])
    files = [s.rfilename for s in info.siblings]
    if "model" not in item:  # a VAE: config + weights into the hub cache, where load_vae looks
        keep = ["config.json", *[w for w in inputs.VAE_WEIGHTS if w in files][:1]]
        folder = Path(snapshot_download(item["repo"], revision=info.sha, allow_patterns=keep))
        hashes = {f: _sha256(folder / f) for f in keep}
        return {"repo": item["repo"], "revision": info.sha, "files": hashes, "cache": str(folder)}
    name = pick_checkpoint(files, item["model"])
    cached = Path(hf_hub_download(item["repo"], name, revision=info.sha))
    path = Path(item["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(cached, "rb") as src, atomic_open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return {"repo": item["repo"], "file": name, "revision": info.sha, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    from udit.io import sha256_file

    return sha256_file(path)


def provenance_path(item: dict) -> Path:
    path = Path(item["path"])
    if "model" not in item and "repo" in item:  # hub VAE id: no local file of that name
        return Path("data") / f"{re.sub(r'[^A-Za-z0-9]+', '-', item['repo'])}.provenance.json"
    return path.with_name(path.name + ".provenance.json")


def local_targets(todo: list[dict]) -> dict[str, Path]:
    """What each item is ('Inception weights') -> the local file it would be written to (a
    hub VAE goes to the hub cache instead)."""
    return {i["what"]: Path(i["path"]) for i in todo if "model" in i or "url" in i}


def check_targets(todo: list[dict], *, configfile: str, overwrite: bool) -> None:
    """Before any download: no target is the config itself or another target, and an existing
    file there (not valid as what the config says it is) is replaced only with --overwrite:
    a path typed wrong in a config must not cost the file it names."""
    targets = local_targets(todo)
    outputs.check(inputs={"--configfile": configfile}, outputs=targets)
    for label, path in targets.items():
        outputs.replace_result(
            path, flag=label, options={}, recorded=lambda _: None, overwrite=overwrite
        )


@command_main("udit download")
def main(argv: list[str] | None = None) -> int:
    """`udit download`: fetch the reference batches, Inception weights, VAE and released
    checkpoints a config names (skipping valid ones), with a provenance JSON per file."""
    parser = argparse.ArgumentParser(prog="udit download", description=main.__doc__)
    parser.add_argument("--configfile", required=True, help="e.g. config/paper.yaml")
    parser.add_argument("--dry-run", action="store_true", help="list what is missing, fetch none")
    outputs.add_overwrite(parser)
    args = parser.parse_args(argv)
    config = ex.load_config(args.configfile)
    todo = wanted(config)
    check_targets(todo, configfile=args.configfile, overwrite=args.overwrite)
    listing = "\n".join(f"  {i['path']}  <-  {_source(i)}  ({i['what']})" for i in todo)
    if not todo:
        print("every external input of the config is present")
        return 0
    if args.dry_run:
        print(f"missing:\n{listing}")
        return 0
    offline = sorted({_source(i) for i in todo if not _reachable(_source(i))})
    if offline:
        raise UserError(
            f"offline (no route to {', '.join(offline)}); fetch these elsewhere and copy them "
            f"to the path on the left:\n{listing}"
        )
    for item in todo:
        print(f"fetching {item['what']} -> {item['path']}", flush=True)
        record = fetch_url(item["url"], Path(item["path"])) if "url" in item else fetch_hub(item)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(provenance_path(item), {"what": item["what"], **record, "at": now})
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
