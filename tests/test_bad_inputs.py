"""Bad input as a careless or hostile user gives it: configs, the DAG and every `udit` command.

Each case asserts the exit code (2 for an expected failure of a `udit` command, Snakemake's 1
for a refused config), that the message names the culprit (file, key or value), that no
Python traceback is printed (except with --debug), that files which were fine stay
byte-identical, and that no command injected through a config string ran.

Case ids start with the outcome they check; `pytest --collect-only -q` lists them:
  clear-error  a `udit` command stops with one `udit <cmd>: error: ...` line, exit 2
  usage-error  argparse-style stop (usage line + `error:`), exit 2
  refused      the config is refused by `udit plan` (load_config) or `snakemake -n`
  quoted       a hostile config string reaches the shell quoted: nothing injected runs
  debug        --debug / UDIT_DEBUG=1 add the traceback to the same message
"""

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from udit import errors, plan
from udit import experiments as ex
from udit.data import features, latents, toy, vae
from udit.metrics import evaluate, reference, standin
from udit.report import render
from udit.sampling import cli as sample
from udit.training import loop

ROOT = Path(__file__).resolve().parents[1]
PAPER = (ROOT / "config" / "paper.yaml").read_text()
SMOKE = (ROOT / "config" / "smoke.yaml").read_text()
UDIT_B = "  u-dit-b:\n    model: U-DiT-B\n"  # one experiment of config/paper.yaml
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
INJECT = "$(touch {m}/PWNED1);touch {m}/PWNED2;#"  # what a hostile `results:` would run


@dataclass
class Case:
    command: Callable[[], int]  # runs the command; may raise SystemExit (argparse)
    culprit: tuple[str, ...]  # every string must appear in stdout + stderr
    code: int = errors.EXIT_USER_ERROR
    unchanged: tuple[Path, ...] = ()  # good files that must keep their bytes
    not_created: tuple[Path, ...] = ()  # what an injected or failed command must not leave
    traceback: bool = False  # only --debug shows one
    check: Callable[[str], None] | None = None  # extra assertions on the output


CASES = []


def case(outcome: str, *marks):
    """Register `make(tmp_path) -> Case` under the id '<outcome>/<name>'."""

    def register(make):
        name = make.__name__.removeprefix("case_").replace("_", "-")
        CASES.append(pytest.param(make, id=f"{outcome}/{name}", marks=marks))
        return make

    return register


# ----------------------------------------------------------------------------- helpers


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old  # the edit must hit: a config change could make it miss
    return text.replace(old, new)


def toy_images(tmp_path: Path) -> Path:
    """A 2-class, 2-image toy ImageFolder (16 px): ~50 ms."""
    out = tmp_path / "images"
    toy.generate_toy_data(out=str(out), num_classes=2, per_class=2, size=16, seed=0)
    return out


def dummy_weights(tmp_path: Path) -> Path:
    """A file where Inception weights are expected: the cases below stop before loading it."""
    return write(tmp_path / "inception.pth", "not read")


def plan_config(tmp_path: Path, text: str) -> Case:
    """`udit plan` on a config: load_config fails before any model is built (should a check
    regress, plan goes on to count the FLOPs of every model: the case fails, slowly)."""
    cfg = write(tmp_path / "cfg.yaml", text)
    return Case(lambda: plan.main(["--configfile", str(cfg)]), (), unchanged=(cfg,))


def snakemake(*args: str, cwd: Path = ROOT) -> Callable[[], int]:
    """A Snakemake subprocess whose output reaches capsys (printed by the test process)."""

    def run() -> int:
        proc = subprocess.run(
            [*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
        )
        print(proc.stdout)
        print(proc.stderr, file=sys.stderr)
        return proc.returncode

    return run


def train_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--model",
        "DiT-S/2",
        "--run-dir",
        str(tmp_path / "run"),
        "--total-steps",
        "4",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        *extra,
    ]


def truncated_manifest(tmp_path: Path) -> Path:
    """A latent cache folder whose manifest.json was cut off mid-write (copied partially)."""
    cache = tmp_path / "latents"
    write(cache / latents.MANIFEST, '{"format_version": 1, "vae": {"name": "tiny", "config_')
    return cache


# ----------------------------------------------------------------------------- config / DAG


@case("refused")
def case_plan_unknown_model(tmp_path):
    c = plan_config(tmp_path, replace_once(PAPER, UDIT_B, UDIT_B.replace("U-DiT-B", "U-DiT-Z")))
    c.culprit = ("experiments/u-dit-b", "'U-DiT-Z'", "did you mean")
    return c


@case("refused")
def case_plan_unknown_model_kw_key(tmp_path):
    text = replace_once(PAPER, UDIT_B, UDIT_B + "    model_kw: {hiden_size: 64}\n")
    c = plan_config(tmp_path, text)
    c.culprit = ("experiments/u-dit-b", "'hiden_size'", "valid keys", "hidden_size")
    return c


@case("refused")
def case_plan_unmatched_scale_prefix(tmp_path):
    # a typo in a prefix was ignored and trained a full-size U-DiT-B in the toy run
    text = replace_once(SMOKE, '"U-DiT-B": {', '"U-DIT-B": {')
    c = plan_config(tmp_path, text)
    c.culprit = ("scale/model_kw/U-DIT-B", "matches no model")
    return c


@case("refused")
def case_plan_scale_model_kw_bad_key(tmp_path):
    text = replace_once(SMOKE, '"DiT-S": {hidden_size: 32', '"DiT-S": {hiden_size: 32')
    c = plan_config(tmp_path, text)
    c.culprit = ("scale/model_kw/DiT-S", "'hiden_size'", "DiT-S/2")
    return c


@case("refused")
def case_plan_duplicate_experiment_id(tmp_path):
    # a second `u-dit-t:` silently replaced the first (DiT-S/2 under the U-DiT-T row)
    text = replace_once(
        PAPER,
        "  u-dit-t:\n",
        "  u-dit-t:\n    model: DiT-S/2\n    table: T1\n    size: toy\n    iterations: 1\n"
        "    evaluations: [{step: 1}]\n  u-dit-t:\n",
    )
    first = PAPER[: PAPER.index("  u-dit-t:\n")].count("\n") + 1
    c = plan_config(tmp_path, text)
    c.culprit = (f"cfg.yaml:{first + 6}:3", "duplicate key 'u-dit-t'", f"line {first}")
    return c


@case("refused")
def case_plan_duplicate_nested_key(tmp_path):
    text = replace_once(SMOKE, "  fid_samples: 16\n", "  fid_samples: 16\n  fid_samples: 64\n")
    c = plan_config(tmp_path, text)
    c.culprit = ("cfg.yaml:", "duplicate key 'fid_samples'")
    return c


@case("refused")
def case_plan_yaml_syntax_error(tmp_path):
    text = replace_once(SMOKE, "  step_divisor: 50000\n", "  step_divisor: [50000\n")
    line = SMOKE[: SMOKE.index("  step_divisor")].count("\n") + 1
    c = plan_config(tmp_path, text)
    c.culprit = ("udit plan: error:", "cfg.yaml:")
    c.check = lambda text: _assert_line_named(text, "cfg.yaml", near=line)
    return c


def _assert_line_named(text: str, name: str, *, near: int) -> None:
    """The message names `name:LINE:COL` with LINE within a few lines of the broken one."""
    after = text.split(f"{name}:", 1)[1]
    line = int(after.split(":", 1)[0])
    assert near <= line <= near + 3, text


@case("refused")
def case_plan_empty_results(tmp_path):
    c = plan_config(tmp_path, replace_once(SMOKE, "results: results\n", 'results: ""\n'))
    c.culprit = ("at results", "should be non-empty")
    return c


@case("refused")
def case_plan_empty_inception_weights(tmp_path):
    text = replace_once(PAPER, "  weights: data/weights", '  weights: ""\n  # data/weights')
    c = plan_config(tmp_path, text)
    c.culprit = ("at inception/weights", "should be non-empty")
    return c


@case("refused")
def case_plan_empty_images_path(tmp_path):
    text = PAPER.replace("    images: data/imagenet/train", '    images: ""', 1)
    c = plan_config(tmp_path, text)
    c.culprit = ("at datasets/imagenet256/images", "should be non-empty")
    return c


@case("refused")
def case_plan_unknown_released_model(tmp_path):
    marker = "released:\n"
    head, tail = PAPER.split(marker, 1)
    model_line = next(ln for ln in tail.splitlines() if ln.strip().startswith("model:"))
    text = head + marker + tail.replace(model_line, model_line.split(":")[0] + ": U-DiT-Q", 1)
    c = plan_config(tmp_path, text)
    c.culprit = ("released/", "'U-DiT-Q'", "not in the registry")
    return c


@case("refused")
def case_plan_base_with_syntax_error(tmp_path):
    broken = PAPER.replace("experiments:\n", "experiments:\n  - [\n", 1)
    base = write(tmp_path / "base.yaml", broken)
    c = plan_config(tmp_path, replace_once(SMOKE, "base: config/paper.yaml", f"base: {base}"))
    c.culprit = (f"{base}:",)
    c.unchanged += (base,)
    return c


@case("refused")
def case_plan_missing_config(tmp_path):
    return Case(
        lambda: plan.main(["--configfile", str(tmp_path / "nope.yaml")]),
        ("udit plan: error:", "nope.yaml does not exist"),
    )


@case("usage-error")
def case_plan_zero_throughput(tmp_path):
    cfg = ROOT / "config" / "smoke.yaml"
    return Case(
        lambda: plan.main(["--configfile", str(cfg), "--gpu-macs-per-s", "0"]),
        ("argument --gpu-macs-per-s", "got 0.0"),
    )


@case("refused")
def case_snakemake_unknown_model(tmp_path):
    cfg = write(
        tmp_path / "cfg.yaml", replace_once(PAPER, UDIT_B, UDIT_B.replace("U-DiT-B", "UDiT-B"))
    )
    return Case(
        snakemake("-n", "--configfile", str(cfg)),
        ("invalid config", "cfg.yaml", "experiments/u-dit-b", "'UDiT-B'"),
        code=1,
        unchanged=(cfg,),
    )


@case("refused")
def case_snakemake_duplicate_key(tmp_path):
    text = replace_once(SMOKE, "  ckpt_every: 4\n", "  ckpt_every: 4\n  ckpt_every: 8\n")
    cfg = write(tmp_path / "cfg.yaml", text)
    return Case(
        snakemake("-n", "--configfile", str(cfg)),
        ("invalid config", "cfg.yaml:", "duplicate key 'ckpt_every'"),
        code=1,
        unchanged=(cfg,),
    )


@case("refused")
def case_snakemake_unmatched_scale_prefix(tmp_path):
    cfg = write(tmp_path / "cfg.yaml", replace_once(SMOKE, '"DiT-XL": {', '"DiT-XXL": {'))
    return Case(
        snakemake("-n", "--configfile", str(cfg)),
        ("invalid config", "scale/model_kw/DiT-XXL", "matches no model"),
        code=1,
        unchanged=(cfg,),
    )


@case("refused")
def case_snakemake_empty_results(tmp_path):
    cfg = write(tmp_path / "cfg.yaml", replace_once(SMOKE, "results: results\n", 'results: ""\n'))
    return Case(
        snakemake("-n", "--configfile", str(cfg)),
        ("results", "should be non-empty"),
        code=1,
        unchanged=(cfg,),
    )


@case("refused")
def case_snakemake_base_syntax_error(tmp_path):
    # Snakemake reads --configfile itself (its YAML error names no file); a base config is ours
    base = write(tmp_path / "base.yaml", PAPER.replace("defaults:\n", "defaults: {\n", 1))
    text = replace_once(SMOKE, "base: config/paper.yaml", f"base: {base}")
    cfg = write(tmp_path / "cfg.yaml", text)
    return Case(
        snakemake("-n", "--configfile", str(cfg)),
        ("invalid config", f"{base}:"),
        code=1,
        unchanged=(cfg, base),
    )


def _hostile_results(tmp_path: Path) -> str:
    """A results folder with a space, `$(...)`, `;` and `#`: all must reach the shell quoted."""
    return f"{tmp_path}/r x{INJECT.format(m=tmp_path)}"


@case("quoted")
def case_snakemake_dry_run_quotes_paths(tmp_path):
    results = _hostile_results(tmp_path)
    text = replace_once(SMOKE, "results: results\n", f"results: {json.dumps(results)}\n")
    cfg = write(tmp_path / "cfg.yaml", text)

    def check(out: str) -> None:
        # every printed command parses back into the literal paths, as the shell will see them
        toy_cmd = shlex.split(next(ln for ln in out.splitlines() if " toy-data --out " in ln))
        assert toy_cmd[toy_cmd.index("--out") + 1] == f"{results}/data/toy32/images"
        assert toy_cmd[toy_cmd.index(">") + 1] == f"{results}/logs/make_toy_data/toy32.log"
        nodes = [ln.strip() for ln in out.splitlines() if " begin-node --run-dir " in ln]
        for line in nodes:  # the training node's run folder (udit begin-node)
            words = shlex.split(line.rstrip("\\").strip())
            assert words[words.index("--run-dir") + 1].startswith(f"{results}/")
        assert nodes
        evaluate_cmd = shlex.split(next(ln for ln in out.splitlines() if " evaluate --" in ln))
        assert evaluate_cmd[evaluate_cmd.index("--samples") + 1].startswith(f"{results}/")

    return Case(
        snakemake("-n", "-p", "--forceall", "--configfile", str(cfg)),
        ("This was a dry-run",),
        code=0,
        unchanged=(cfg,),
        not_created=(tmp_path / "PWNED1", tmp_path / "PWNED2"),
        check=check,
    )


@case("quoted")
def case_snakemake_runs_rule_with_hostile_results(tmp_path):
    # one real job: a path with a space, $(...) and ; is written literally, nothing else runs
    work = tmp_path / "work"
    work.mkdir()
    results = f"r x{INJECT.format(m=tmp_path)}"
    text = replace_once(SMOKE, "results: results\n", f"results: {json.dumps(results)}\n")
    cfg = write(work / "cfg.yaml", text)
    target = f"{results}/data/toy32/images"

    def check(out: str) -> None:
        images = work / target
        assert len(list(images.glob("*/*.png"))) == 4 * 16, out[-2000:]
        log = (work / results / "logs" / "make_toy_data" / "toy32.log").read_text()
        assert "64 written" in log

    return Case(
        snakemake(
            "-s",
            str(ROOT / "Snakefile"),
            "--cores",
            "1",
            target,
            "--configfile",
            cfg.name,
            cwd=work,
        ),
        ("1 of 1 steps (100%) done",),
        code=0,
        unchanged=(cfg,),
        not_created=(tmp_path / "PWNED1", tmp_path / "PWNED2"),
        check=check,
    )


# ----------------------------------------------------------------------------- udit train


@case("clear-error")
def case_import_features_missing_folder(tmp_path):
    out = tmp_path / "latents"
    argv = ["--features", str(tmp_path / "no-such-features"), "--out", str(out)]
    return Case(
        lambda: features.main(argv),
        ("udit import-features: error:", "--features", "no-such-features", "imagenet_feature"),
        not_created=(out,),
    )


@case("clear-error")
def case_train_missing_latents(tmp_path):
    args = train_args(tmp_path, "--latents", str(tmp_path / "no-cache"))
    return Case(
        lambda: loop.main(args),
        ("udit train: error:", "no-cache", "extract-latents"),
        not_created=(tmp_path / "run",),  # its options.json would refuse the corrected command
    )


@case("clear-error")
def case_train_truncated_manifest(tmp_path):
    cache = truncated_manifest(tmp_path)
    manifest = cache / latents.MANIFEST
    return Case(
        lambda: loop.main(train_args(tmp_path, "--latents", str(cache))),
        (str(manifest), "not valid JSON"),
        unchanged=(manifest,),
        not_created=(tmp_path / "run",),
    )


@case("clear-error")
def case_train_pixel_with_latents(tmp_path):
    args = train_args(tmp_path, "--latents", str(tmp_path), "--pixel")
    return Case(lambda: loop.main(args), ("--pixel trains on images",))


@case("clear-error")
def case_train_stop_after_end(tmp_path):
    args = train_args(tmp_path, "--images", str(tmp_path), "--stop-at", "9")
    return Case(lambda: loop.main(args), ("--stop-at 9", "--total-steps 4"))


@case("clear-error")
def case_train_milestone_after_end(tmp_path):
    args = train_args(tmp_path, "--images", str(tmp_path), "--milestones", "2,40")
    return Case(lambda: loop.main(args), ("--milestones", "40"))


@case("clear-error")
def case_train_unknown_model(tmp_path):
    args = train_args(tmp_path, "--images", str(tmp_path))
    args[1] = "DiT-Q/3"
    return Case(lambda: loop.main(args), ("--model", "'DiT-Q/3'", "known models"))


@case("clear-error")
def case_train_unknown_model_kw_key(tmp_path):
    args = train_args(tmp_path, "--images", str(tmp_path), "--model-kw", "hiden_size=32")
    return Case(lambda: loop.main(args), ("hiden_size", "DiT-S/2", "valid keys"))


@case("clear-error")
def case_train_model_kw_without_value(tmp_path):
    args = train_args(tmp_path, "--images", str(tmp_path), "--model-kw", "depth")
    return Case(lambda: loop.main(args), ("--model-kw expects key=value", "'depth'"))


@case("clear-error")
def case_train_negative_workers(tmp_path):
    args = train_args(tmp_path, "--images", str(tmp_path))
    args[args.index("--num-workers") + 1] = "-1"
    return Case(lambda: loop.main(args), ("argument --num-workers", "got -1"))


@case("clear-error")
def case_train_more_classes_than_num_classes(tmp_path):
    images = toy_images(tmp_path)
    args = train_args(tmp_path, "--images", str(images), "--pixel", "--image-size", "16",
                      "--num-classes", "1")  # fmt: skip
    return Case(lambda: loop.main(args), (str(images), "2 classes", "--num-classes is 1"))


# ----------------------------------------------------------------------------- udit sample


def sample_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--out", str(tmp_path / "s.npz"), "--num-samples", "2", "--device", "cpu", *extra]


@case("clear-error")
def case_sample_missing_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt-0000004.pt"
    return Case(
        lambda: sample.main([*sample_args(tmp_path), "--checkpoint", str(ckpt)]),
        ("udit sample: error:", "checkpoint not found", str(ckpt)),
    )


@case("clear-error")
def case_sample_out_not_npz(tmp_path):
    ckpt = write(tmp_path / "ckpt.pt", "a good checkpoint stands here")
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "s.png"), "--device", "cpu"]
    return Case(lambda: sample.main(args), ("--out must end in .npz", "s.png"), unchanged=(ckpt,))


@case("clear-error")
def case_sample_zero_samples(tmp_path):
    ckpt = write(tmp_path / "ckpt.pt", "a good checkpoint stands here")
    args = [*sample_args(tmp_path), "--checkpoint", str(ckpt)]
    args[args.index("--num-samples") + 1] = "0"
    return Case(lambda: sample.main(args), ("--num-samples", "got 0"), unchanged=(ckpt,))


# ----------------------------------------------------------------------------- udit evaluate


def evaluate_args(tmp_path: Path, samples: Path, reference_npz: Path) -> list[str]:
    return [
        "--samples",
        str(samples),
        "--reference",
        str(reference_npz),
        "--inception-weights",
        str(dummy_weights(tmp_path)),
        "--out",
        str(tmp_path / "metrics.json"),
        "--device",
        "cpu",
    ]


@case("clear-error")
def case_evaluate_missing_samples(tmp_path):
    args = evaluate_args(tmp_path, tmp_path / "none.npz", tmp_path / "ref.npz")
    return Case(lambda: evaluate.main(args), ("udit evaluate: error:", "none.npz"))


@case("clear-error")
def case_evaluate_truncated_samples(tmp_path):
    import numpy as np

    good = tmp_path / "good.npz"
    np.savez(good, arr_0=np.zeros((4, 16, 16, 3), np.uint8))
    cut = write(tmp_path / "cut.npz", "")
    cut.write_bytes(good.read_bytes()[:300])  # a copy that stopped early
    args = evaluate_args(tmp_path, cut, good)
    return Case(
        lambda: evaluate.main(args),
        (str(cut), "not a valid .npz"),
        unchanged=(cut, good),
        not_created=(tmp_path / "metrics.json",),
    )


@case("clear-error")
def case_evaluate_reference_not_adm(tmp_path):
    import numpy as np

    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.zeros((4, 16, 16, 3), np.uint8))
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=np.zeros((4, 16, 16, 3), np.uint8))  # images only, no statistics
    return Case(
        lambda: evaluate.main(evaluate_args(tmp_path, samples, ref)),
        (str(ref), "not an ADM reference batch", "mu"),
        unchanged=(samples, ref),
    )


@case("clear-error")
def case_evaluate_float_samples(tmp_path):
    import numpy as np

    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.zeros((4, 16, 16, 3), np.float32))
    return Case(
        lambda: evaluate.main(evaluate_args(tmp_path, samples, tmp_path / "ref.npz")),
        (str(samples), "must be uint8"),
        unchanged=(samples,),
    )


@case("usage-error")
def case_evaluate_missing_inception_weights(tmp_path):
    args = evaluate_args(tmp_path, tmp_path / "s.npz", tmp_path / "r.npz")
    args[args.index("--inception-weights") + 1] = str(tmp_path / "missing.pth")
    return Case(lambda: evaluate.main(args), ("Inception weights not found", "missing.pth"))


@case("usage-error")
def case_evaluate_zero_batch(tmp_path):
    args = [*evaluate_args(tmp_path, tmp_path / "s.npz", tmp_path / "r.npz"), "--batch-size", "0"]
    return Case(lambda: evaluate.main(args), ("argument --batch-size", "got 0"))


# ----------------------------------------------------------------------------- build-reference


def reference_args(tmp_path: Path, images: Path) -> list[str]:
    return [
        "--images",
        str(images),
        "--out",
        str(tmp_path / "ref.npz"),
        "--inception-weights",
        str(dummy_weights(tmp_path)),
        "--device",
        "cpu",
    ]


@case("clear-error")
def case_reference_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    args = reference_args(tmp_path, tmp_path / "empty")
    return Case(lambda: reference.main(args), ("udit build-reference: error:", "no image files"))


@case("clear-error")
def case_reference_missing_folder(tmp_path):
    args = reference_args(tmp_path, tmp_path / "nowhere")
    return Case(lambda: reference.main(args), ("not a directory", "nowhere"))


@case("clear-error")
def case_reference_corrupt_image(tmp_path):
    images = toy_images(tmp_path)
    bad = write(images / "00_circle" / "broken.png", "not a png")
    return Case(
        lambda: reference.main(reference_args(tmp_path, images)),
        (str(bad), "not a readable image"),
        unchanged=(bad,),
        not_created=(tmp_path / "ref.npz",),
    )


@case("clear-error")
def case_reference_too_many_images(tmp_path):
    images = toy_images(tmp_path)
    args = [*reference_args(tmp_path, images), "--num-images", "50"]
    return Case(lambda: reference.main(args), ("--num-images 50", "holds 4 images"))


# ----------------------------------------------------------------------------- other commands


@case("clear-error")
def case_report_missing_config(tmp_path):
    (tmp_path / "results").mkdir()
    args = ["--configfile", str(tmp_path / "gone.yaml"), "--results", str(tmp_path / "results")]
    return Case(lambda: render.main(args), ("udit report: error:", "gone.yaml does not exist"))


@case("clear-error")
def case_report_missing_results(tmp_path):
    args = ["--configfile", str(ROOT / "config/smoke.yaml"), "--results", str(tmp_path / "r")]
    return Case(lambda: render.main(args), ("results folder", str(tmp_path / "r")))


@case("usage-error")
def case_extract_latents_zero_batch(tmp_path):
    args = ["--images", str(tmp_path), "--out", str(tmp_path / "c"), "--batch-size", "0"]
    return Case(lambda: latents.main(args), ("argument --batch-size:", "got 0"))


@case("clear-error")
def case_extract_latents_truncated_manifest(tmp_path):
    images = toy_images(tmp_path)
    tiny = tmp_path / "vae"
    vae.main(["--out", str(tiny)])
    cache = truncated_manifest(tmp_path)
    manifest = cache / latents.MANIFEST
    args = ["--images", str(images), "--out", str(cache), "--vae", str(tiny), "--image-size", "16"]
    return Case(
        lambda: latents.main([*args, "--device", "cpu"]),
        (str(manifest), "not valid JSON"),
        unchanged=(manifest,),
    )


@case("usage-error")
def case_toy_data_bad_size(tmp_path):
    args = ["--out", str(tmp_path / "t"), "--image-size", "4"]
    return Case(lambda: toy.main(args), ("argument --image-size:", "[16, 1024]", "got 4"))


@case("clear-error")
def case_toy_data_out_is_a_file(tmp_path):
    out = write(tmp_path / "taken", "someone's file")
    args = ["--out", str(out), "--num-classes", "1", "--per-class", "1"]
    return Case(lambda: toy.main(args), ("udit toy-data: error:", str(out)), unchanged=(out,))


@case("clear-error")
def case_toy_data_corrupt_manifest(tmp_path):
    out = toy_images(tmp_path)
    manifest = out / toy.MANIFEST
    manifest.write_text(manifest.read_text()[:20])
    image = next(out.glob("*/*.png"))
    args = ["--out", str(out), "--num-classes", "2", "--per-class", "2", "--image-size", "16"]
    return Case(
        lambda: toy.main(args), (str(manifest), "not valid JSON"), unchanged=(manifest, image)
    )


@case("clear-error")
def case_toy_data_other_settings(tmp_path):
    out = toy_images(tmp_path)
    image = next(out.glob("*/*.png"))
    args = ["--out", str(out), "--num-classes", "2", "--per-class", "2", "--image-size", "32"]
    return Case(lambda: toy.main(args), ("other settings", str(out)), unchanged=(image,))


@case("usage-error")
def case_flops_unknown_model(tmp_path):
    from udit import flops

    args = ["--models", "DiT-S/3", "--out", str(tmp_path)]
    return Case(lambda: flops.main(args), ("unknown model 'DiT-S/3'",))


@case("usage-error")
def case_standin_missing_calibration(tmp_path):
    args = ["--out", str(tmp_path / "w.pth"), "--seed", "0"]
    args += ["--calibration-images", str(tmp_path / "none")]
    return Case(lambda: standin.main(args), ("--calibration-images", "not a directory"))


@case("usage-error")
def case_cli_dispatch_passes_exit_code(tmp_path):
    from udit import cli

    args = ["toy-data", "--out", str(tmp_path / "t"), "--per-class", "0"]
    return Case(lambda: cli.main(args), ("argument --per-class:", "got 0"))


# ----------------------------------------------------------------------------- --debug


@case("debug")
def case_debug_flag_shows_traceback(tmp_path):
    out = write(tmp_path / "taken", "someone's file")
    args = ["--out", str(out), "--num-classes", "1", "--per-class", "1", "--debug"]
    return Case(
        lambda: toy.main(args),
        ("udit toy-data: error:", "Error", str(out)),
        unchanged=(out,),
        traceback=True,
    )


@case("debug")
def case_debug_env_shows_traceback(tmp_path):
    def run():
        os.environ[errors.DEBUG_ENV] = "1"
        try:
            return plan.main(["--configfile", str(tmp_path / "nope.yaml")])
        finally:
            del os.environ[errors.DEBUG_ENV]

    return Case(run, ("udit plan: error:", "ConfigError", "nope.yaml"), traceback=True)


# ----------------------------------------------------------------------------- the test


def _run(command: Callable[[], int]) -> int:
    try:
        return command()
    except SystemExit as exit_:  # argparse's parser.error
        return exit_.code


@pytest.mark.parametrize("make", CASES)
def test_bad_input(make, tmp_path, capsys):
    case_ = make(tmp_path)
    capsys.readouterr()  # set-up output is not the command's
    before = {path: path.read_bytes() for path in case_.unchanged}
    code = _run(case_.command)
    out, err = capsys.readouterr()
    text = out + err
    assert code == case_.code, text[-3000:]
    for culprit in case_.culprit:
        assert culprit in text, f"{culprit!r} not named in:\n{text[-3000:]}"
    assert ("Traceback" in text) == case_.traceback, text[-3000:]
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} changed"
    for path in case_.not_created:
        assert not path.exists(), f"{path} exists: an injected command ran"
    if case_.check is not None:
        case_.check(text)


def test_enough_cases():
    assert len(CASES) >= 25


def test_registry_index_matches_the_registry():
    """udit/models/registry.json (read by config checks without torch) is the live registry."""
    from udit.models.index import INDEX_PATH, registry_index

    assert json.loads(INDEX_PATH.read_text()) == registry_index(), (
        "the model registry changed: run `python -m udit.models.index`"
    )


def test_the_index_tool_rewrites_the_committed_file(tmp_path, monkeypatch, capsys):
    """`python -m udit.models.index` writes byte for byte the committed registry.json."""
    from udit.models import index

    committed = index.INDEX_PATH.read_bytes()
    monkeypatch.setattr(index, "INDEX_PATH", tmp_path / "registry.json")
    assert index.main() == 0
    assert (tmp_path / "registry.json").read_bytes() == committed
    assert capsys.readouterr().out == f"wrote {tmp_path / 'registry.json'}\n"


def test_duplicate_keys_under_a_merge_key_are_allowed(tmp_path):
    """`<<:` merges may repeat keys (YAML merge semantics); only literal duplicates are errors."""
    cfg = write(tmp_path / "m.yaml", "a: &x {k: 1, j: 2}\nb:\n  <<: *x\n  k: 3\n")
    assert ex.load_yaml(cfg) == {"a": {"k": 1, "j": 2}, "b": {"k": 3, "j": 2}}
