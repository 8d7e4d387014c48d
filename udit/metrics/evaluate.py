"""`udit evaluate`: FID, sFID, IS, precision, recall (and KID) of a sample batch, ADM protocol.

    udit evaluate --samples SAMPLES.npz --reference REF.npz --inception-weights W --out METRICS.json

SAMPLES.npz: arr_0 uint8 (N, H, W, 3) (arr_1 labels, unused). REF.npz: from
`udit build-reference` or ADM's VIRTUAL_imagenet256_labeled.npz. One Inception pass over
the samples gives pool_3, logits and the sFID map; every metric comes from those features
(see scores.py for the protocol). The reference's pool_3 features (for P/R, KID) are read
from REF.npz when they were computed with the same weights, else computed from its arr_0.
torch-fidelity's on-disk cache is never used (its key ignores the weights file).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from udit import argtypes, distributed, outputs
from udit.cli import add_device, add_dry_run, dry_run
from udit.errors import BadValueError, command_main
from udit.io import atomic_savez, atomic_write_json, read_json, sha256_file
from udit.metrics import inception, intervals, provenance, scores
from udit.metrics.npz import NpzImages
from udit.metrics.reference import load_reference

BOOTSTRAP = argtypes.Range("int", 0, 1_000_000)
RESIZE = (
    "bilinear to 299x299, TF1-compatible (torch-fidelity interpolate_bilinear_2d_like_tensorflow1x)"
)


def reference_pool_features(
    ref: dict, *, extractor, weights_sha256: str, batch_size: int, num_workers: int
) -> tuple[np.ndarray, str]:
    """pool_3 features of the reference images: cached in the npz if the weights match."""
    if ref["pool_3"] is not None and ref["inception_sha256"] == weights_sha256:
        if len(ref["pool_3"]) != len(ref["images"]):
            raise BadValueError(
                f"reference pool_3 has {len(ref['pool_3'])} rows for {len(ref['images'])} images"
            )
        return ref["pool_3"], "read from reference npz (same weights)"
    feats = inception.extract_features(
        ref["images"], extractor=extractor, batch_size=batch_size, num_workers=num_workers
    )
    return feats[inception.POOL], "computed from reference arr_0"


def evaluate(
    *,
    samples: Path,  # npz with arr_0 uint8 (N, H, W, 3)
    reference: Path,  # ADM-format reference npz
    weights: Path,  # Inception weights file (resolved)
    device,  # torch.device
    first: int | None = None,  # score the first N samples of the file (default: all)
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
    bootstrap: int = intervals.DEFAULT_RESAMPLES,  # 0: no intervals
    seed: int = intervals.DEFAULT_SEED,  # bootstrap resamples and N = inf subsets
    features_out: Path | None = None,  # where to keep the per-sample features (npz)
) -> dict:
    """All metrics plus protocol and provenance, as the JSON `udit evaluate` writes."""
    sample_images = NpzImages(samples, limit=first)
    ref = load_reference(reference)
    check_same_resolution(sample_images, ref["images"], samples=samples, reference=reference)
    feats, ref_pool, ref_pool_source, extract_s = _inception_features(
        sample_images,
        ref,
        weights=weights,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    scored = _scores(feats, ref=ref, ref_pool=ref_pool)
    if features_out is not None:
        save_features(features_out, feats)
    start = time.perf_counter()
    uncertainty = _uncertainty(
        feats, ref=ref, ref_pool=ref_pool, bootstrap=bootstrap, seed=seed, device=device
    )
    uncertainty_s = time.perf_counter() - start
    prov = provenance.collect(
        device=device, weights=weights, files={"samples": samples, "reference": reference}
    )
    protocol = _protocol(
        n=len(sample_images),
        ref=ref,
        resolution=sample_images.shape[1:3],
        scored=scored,
        ref_pool_source=ref_pool_source,
        batch_size=batch_size,
    )
    return {
        **_headline(scored),
        "uncalibrated": not prov["inception_weights"]["official"],
        "samples": sample_metadata(samples),
        "protocol": protocol,
        "timing": {
            "sample_features_s": round(extract_s, 3),
            "images_per_s": round(len(sample_images) / extract_s, 3),
            "uncertainty_s": round(uncertainty_s, 3),
        },
        "provenance": prov,
        **uncertainty,
    }


def _inception_features(
    sample_images, ref: dict, *, weights: Path, device, batch_size: int, num_workers: int, progress
) -> tuple[dict, np.ndarray, str, float]:
    """One Inception pass over the samples, and the reference's pool_3 features; -> (sample
    features, reference pool_3, where those came from, seconds the sample pass took)."""
    weights_sha = provenance.sha256_file(weights)
    extractor = inception.load_extractor(weights=weights, device=device)
    start = time.perf_counter()
    feats = inception.extract_features(
        sample_images,
        extractor=extractor,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )
    extract_s = time.perf_counter() - start
    ref_pool, ref_pool_source = reference_pool_features(
        ref,
        extractor=extractor,
        weights_sha256=weights_sha,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    return feats, ref_pool, ref_pool_source, extract_s


def _scores(feats: dict, *, ref: dict, ref_pool) -> dict:
    """Every metric of the samples' features against the reference (scores.py)."""
    return {
        "fid": scores.frechet_distance_to_features(
            feats[inception.POOL], {"mu": ref["mu"], "sigma": ref["sigma"]}
        ),
        "sfid": scores.frechet_distance_to_features(
            feats[inception.SPATIAL], {"mu": ref["mu_s"], "sigma": ref["sigma_s"]}
        ),
        "is_adm": scores.inception_score_adm(feats[inception.LOGITS]),
        "is_tf": scores.inception_score_torch_fidelity(feats[inception.LOGITS]),
        "pr": scores.precision_recall(feats[inception.POOL], ref_pool),
        "kid": scores.kid(feats[inception.POOL], ref_pool),
    }


def _headline(scored: dict) -> dict:
    """The metrics as the JSON's first keys, in its order."""
    return {
        "fid": scored["fid"],
        "sfid": scored["sfid"],
        "is": scored["is_adm"]["mean"],
        "precision": scored["pr"]["precision"],
        "recall": scored["pr"]["recall"],
        "kid": scored["kid"]["mean"],
        "kid_std": scored["kid"]["std"],
        "is_torch_fidelity": scored["is_tf"],
    }


FEATURES_SUFFIX = ".features.npz"


def features_path(out: Path) -> Path:
    """METRICS.json -> METRICS.features.npz beside it: the per-sample Inception features."""
    return out.with_name(out.stem + FEATURES_SUFFIX)


def save_features(path: Path, feats: dict) -> None:
    """Per-sample features for a re-analysis without an Inception pass (atomic npz).
    pool_3 (FID, P/R, KID) and logits (IS) stay float32, as extracted, so every metric comes
    back exactly; the spatial map (sFID, the widest) is float16 (relative error ~5e-4):
    (2048 + 1008) x 4 + 2023 x 2 = 16,270 bytes per sample, 0.81 GB for 50k samples."""
    atomic_savez(
        path,
        pool_3=np.asarray(feats[inception.POOL], np.float32),  # (N, 2048)
        logits=np.asarray(feats[inception.LOGITS], np.float32),  # (N, 1008)
        spatial=np.asarray(feats[inception.SPATIAL], np.float16),  # (N, 2023)
    )


def _uncertainty(feats: dict, *, ref: dict, ref_pool, bootstrap: int, seed: int, device) -> dict:
    """Bootstrap intervals of every metric (none when bootstrap is 0) and FID / IS at N = inf."""
    pool, logits = feats[inception.POOL], feats[inception.LOGITS]
    fid_inf = intervals.fid_infinity(
        pool, {"mu": ref["mu"], "sigma": ref["sigma"]}, seed=seed, device=device
    )
    is_inf = intervals.is_infinity(logits, seed=seed)
    spread = {}
    if bootstrap > 0:
        spread = intervals.metric_intervals(
            pool=pool,
            logits=logits,
            spatial=feats[inception.SPATIAL],
            reference=ref,
            ref_pool=ref_pool,
            resamples=bootstrap,
            seed=seed,
            device=device,
        )
    return {
        "intervals": spread,
        "uncertainty_options": {"bootstrap": bootstrap, "seed": seed},
        "fid_infinity": fid_inf["value"],
        "is_infinity": is_inf["value"],
        "fid_infinity_fit": fid_inf,
        "is_infinity_fit": is_inf,
    }


class ResolutionMismatchError(BadValueError):
    """Samples and reference images of different sizes: Inception resizes both to 299 px, so
    the metrics come out as numbers but compare blur levels, not models."""


def check_same_resolution(sample_images, ref_images, *, samples: Path, reference: Path) -> None:
    """Refuse samples whose H x W differs from the reference's, naming both files and sizes."""
    got, want = tuple(sample_images.shape[1:3]), tuple(ref_images.shape[1:3])
    if got != want:
        raise ResolutionMismatchError(
            f"samples {samples} are {got[0]}x{got[1]} px but the reference {reference} is "
            f"{want[0]}x{want[1]} px; sample at the reference's resolution or build a reference "
            f"at {got[0]} px (udit build-reference --image-size {got[0]})"
        )


def sample_metadata(samples: Path) -> dict | None:
    """What `udit sample` recorded beside the npz (SAMPLES.npz.json: checkpoint hash, cfg scale,
    steps, seed, N), so a metrics file names the samples it scored; None for a foreign npz."""
    summary = Path(str(samples) + ".json")
    if not summary.is_file():
        return None
    try:
        data = json.loads(summary.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {"num_samples": data.get("num_samples"), **data.get("config", {})}


def _protocol(*, n, ref, resolution, scored, ref_pool_source, batch_size) -> dict:
    """How every number was computed (ADM protocol, with torch-fidelity's extractor)."""
    is_adm, is_tf, kid = scored["is_adm"], scored["is_tf"], scored["kid"]
    return {
        "N": n,
        "N_reference": len(ref["images"]),
        "sample_resolution": list(resolution),
        "k": scores.PRC_K,
        "splits": is_adm["splits"],
        "split_size": is_adm["split_size"],
        "shuffle": False,
        "seeds": {"kid_subsets": kid["seed"], "is_torch_fidelity_shuffle": is_tf["seed"]},
        "kid_subsets": kid["subsets"],
        "kid_subset_size": kid["subset_size"],
        "resize": RESIZE,
        "features": {
            "fid": "pool_3 (2048)",
            "sfid": "mixed_6/conv[..., :7] NHWC (2023)",
            "is": "softmax(pool_3 @ W, no bias) (1008)",
            "precision_recall": "pool_3 (2048)",
            "kid": "pool_3 (2048)",
        },
        "reference_statistics": "mu, sigma, mu_s, sigma_s read from the reference npz",
        "reference_pool_3": ref_pool_source,
        "prc_distance_dtype": "float32",
        "batch_size": batch_size,
    }


@command_main("udit evaluate")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="udit evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=Path, required=True, help="npz with arr_0 uint8 (N, H, W, 3)"
    )
    parser.add_argument("--reference", type=Path, required=True, help="ADM-format reference npz")
    inception.add_weights_argument(parser)
    parser.add_argument(
        "--out", type=Path, required=True, help="metrics JSON to write (atomically)"
    )
    parser.add_argument(  # not --num-samples: `udit sample --num-samples N` makes N
        "--first",
        type=argtypes.SAMPLES,
        default=None,
        metavar="N",
        help="score the first N samples of the file (default: all)",
    )
    parser.add_argument("--batch-size", type=argtypes.BATCH, default=64)
    parser.add_argument(
        "--num-workers", type=argtypes.WORKERS, default=0, help="DataLoader workers"
    )
    add_device(parser)
    parser.add_argument("--progress", action="store_true", help="print extraction progress")
    parser.add_argument(
        "--bootstrap",
        type=BOOTSTRAP,
        default=intervals.DEFAULT_RESAMPLES,
        help="resamples of the generated samples for each metric's interval (0: none)",
    )
    parser.add_argument(
        "--seed",
        type=argtypes.SEED,
        default=intervals.DEFAULT_SEED,
        help="seed of the bootstrap resamples and of the FID/IS-infinity subsets",
    )
    outputs.add_overwrite(parser)
    add_dry_run(parser)
    args = parser.parse_args(argv)
    if dry_run(args):
        return 0

    weights = inception.weights_from_args(parser, args)
    outputs.check(
        inputs={
            "--samples": args.samples,
            "--reference": args.reference,
            "--inception-weights": weights,
        },
        outputs={"--out": args.out, "--out (its features file)": features_path(args.out)},
    )
    with outputs.locked(args.out):
        return _evaluate_to(args, weights)


def scored_inputs(
    samples: Path,
    reference: Path,
    weights: Path,
    first: int | None,
    bootstrap: int = intervals.DEFAULT_RESAMPLES,
    seed: int = intervals.DEFAULT_SEED,
) -> dict:
    """What a metrics file is the result of: the three input files' hashes, the sample count
    asked for and the resampling options; a re-run with the same is a no-op, with others it
    would replace a result."""
    return {
        "samples": sha256_file(samples),
        "reference": sha256_file(reference),
        "inception_weights": sha256_file(weights),
        "first": first,
        "bootstrap": bootstrap,
        "seed": seed,
    }


def _recorded_inputs(path: Path) -> dict | None:
    """scored_inputs() of an existing metrics JSON, or None when it is not one."""
    data = read_json(path, what="metrics file")
    if not isinstance(data, dict) or not isinstance(data.get("provenance"), dict):
        return None
    prov = data["provenance"]
    return {
        "samples": prov.get("sha256", {}).get("samples"),
        "reference": prov.get("sha256", {}).get("reference"),
        "inception_weights": prov.get("inception_weights", {}).get("sha256"),
        "first": data.get("first_requested", data.get("num_samples_requested")),  # older files
        # a file from before the intervals records none: a re-run adds them (other options)
        "bootstrap": data.get("uncertainty_options", {}).get("bootstrap"),
        "seed": data.get("uncertainty_options", {}).get("seed"),
    }


def _evaluate_to(args, weights: Path) -> int:
    # hashed only when a result is there to compare with (a missing input is named below)
    features_out = features_path(args.out)
    if args.out.exists() and outputs.replace_result(
        args.out,
        flag="--out",
        options=scored_inputs(
            args.samples, args.reference, weights, args.first, args.bootstrap, args.seed
        ),
        recorded=_recorded_inputs,
        overwrite=args.overwrite,
    ):
        if features_out.is_file():
            print(f"{args.out} already holds the metrics of these inputs; nothing to do")
            return 0
        print(f"{features_out} is missing: evaluating again to write it")
    result = evaluate(
        samples=args.samples,
        reference=args.reference,
        weights=weights,
        device=distributed.pick_device(args.device),
        first=args.first,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        progress=args.progress,
        bootstrap=args.bootstrap,
        seed=args.seed,
        features_out=features_out,  # written before the JSON: a JSON implies its features
    )
    result["first_requested"] = args.first
    atomic_write_json(args.out, result)
    flag = "  [UNCALIBRATED: not the official Inception weights]" if result["uncalibrated"] else ""
    print(
        f"FID {result['fid']:.4f}  sFID {result['sfid']:.4f}  IS {result['is']:.3f}  "
        f"precision {result['precision']:.4f}  recall {result['recall']:.4f}  "
        f"KID {result['kid']:.6f}{flag}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
