"""The model card (README.md) of an export, in the Hugging Face Hub format: YAML front matter,
then what the model is, how it was trained, how it scores beside the paper, where it comes
from, and how to load and sample it."""

import json
from pathlib import Path

import yaml

from udit.errors import BadValueError
from udit.io import read_json
from udit.paper import recipe

ARXIV = "2405.02730"
PAPER = "U-DiTs: Downsample Tokens in U-Shaped Diffusion Transformers"
METRICS = ("fid", "sfid", "is", "precision", "recall")  # paper_numbers.yaml columns after gflops
TRAIN_FIELDS = (
    "total_steps",
    "global_batch",
    "lr",
    "weight_decay",
    "ema_decay",
    "seed",
    "image_size",
    "num_classes",
    "precision",
    "vae",
)


def read_metrics(path: str | Path) -> dict:
    """A metrics JSON (`udit evaluate --out`): an object with at least one of METRICS as a
    number. Missing or invalid: one line naming the file and the fix."""
    path = Path(path)
    fix = "give the JSON that `udit evaluate --out` wrote, or drop --metrics"
    if not path.is_file():
        raise FileNotFoundError(f"--metrics {path}: no such file; {fix}")
    data = read_json(path, what="--metrics file", hint=fix)
    found = isinstance(data, dict) and any(_number(data.get(k)) for k in METRICS)
    if not found:
        raise BadValueError(
            f"--metrics {path} holds none of {', '.join(METRICS)} as a number; {fix}"
        )
    return data


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def paper_values(paper: tuple[str, str, str | None] | None) -> dict:
    """{column: value} of the paper row (table, row, key) the run reproduces; {} for none. An
    unknown table or row is one line listing the valid ones (udit.experiments.paper_row)."""
    if paper is None:
        return {}
    from udit.experiments import ConfigError, paper_row

    table, row, key = paper
    try:
        return paper_row(table=table, row=row, key=key)
    except ConfigError as err:
        raise BadValueError(f"--paper-table/--paper-row: {err}") from None


def front_matter(*, model: str, conditional: bool, hub_class: bool) -> str:
    meta = {
        "library_name": "diffusers",
        "license": "other",
        "pipeline_tag": "unconditional-image-generation",
        "tags": [
            "diffusers",
            "DiTPipeline",
            "class-conditional-image-generation" if conditional else "image-generation",
            "diffusion-transformer",
            "u-dit" if hub_class else "dit",
            "reproduction",
        ],
        "arxiv": ARXIV,
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _metrics_table(paper: tuple[str, str, str | None] | None, metrics: dict | None) -> list[str]:
    """The reproduction's metrics beside the paper row the run reproduces (given by the caller,
    as the DAG's evaluation names it: a row holds one setting of steps, size and guidance)."""
    theirs = paper_values(paper)
    if metrics is None and not theirs:
        return ["No metrics were given to the export (`udit export --metrics METRICS.json`)."]
    lines = ["| metric | this reproduction | paper |", "|---|---|---|"]
    for key in METRICS:
        ours = (metrics or {}).get(key)
        shown = f"{ours:.4g}" if _number(ours) else "-"
        value = theirs.get(key)
        lines.append(f"| {key} | {shown} | {'-' if value is None else value} |")
    where = (
        f"table `{paper[0]}`, row `{' / '.join(filter(None, paper[1:]))}` of the paper "
        f"(arXiv {ARXIV})"
        if theirs
        else "none given (`udit export --paper-table T --paper-row R`)"
    )
    lines += ["", f"Paper column: {where}."]
    if metrics and metrics.get("uncalibrated"):
        lines.append(
            "The reproduction's metrics used uncalibrated Inception weights (a smoke run)."
        )
    return lines


LICENSE_TEXT = (
    "`license: other`: these weights were trained by this reproduction; the reproduction code "
    "is MIT. The architectures follow the official DiT code (CC BY-NC 4.0) and U-DiT code; "
    "check both licenses before using the weights commercially."
)


def _intro(model: str, *, hub_class: bool) -> str:
    transformer = "udit class `UDiTTransformer2DModel`" if hub_class else "`DiTTransformer2DModel`"
    return (
        f"Class-conditional latent diffusion transformer `{model}` from *{PAPER}* "
        f"([arXiv {ARXIV}](https://arxiv.org/abs/{ARXIV})), trained by the udit-repro "
        f"reproduction and exported as a diffusers `DiTPipeline` folder ({transformer}, the "
        f"run's AutoencoderKL, a DDPMScheduler, the class-label map)."
    )


def _sampling_note(r) -> str:
    """Where DiTPipeline's sampling differs from the paper's (udit sample's)."""
    return (
        f"The paper's FID setting is {r.sampling_steps} DDPM steps, no guidance "
        f"(`guidance_scale=1`); its guided rows use 1.5. The exported DDPMScheduler spaces "
        f"steps like udit (`timestep_spacing='linspace'`) but uses the fixed posterior variance "
        f"where udit's sampler uses the model's learned sigma, and DiTPipeline guides all "
        f"latent channels where the official sampler guides the first {r.guidance_channels}: "
        f"exact reproduction of the paper's numbers uses `udit sample`. For DDIM, "
        f"`DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing='leading')` is "
        f"udit's `ddimN` respacing."
    )


def render(
    *,
    model: str,
    model_kw: dict,
    args: dict,
    step,
    weights: str,
    checkpoint_name: str,
    checkpoint_sha256: str,
    hub_class: bool,
    num_classes: int,
    metrics: dict | None,
    metrics_sha256: str | None,
    paper: tuple[str, str, str | None] | None = None,
    check: dict,
    code_commit: str | None,
) -> str:
    """The README.md text."""
    r = recipe()
    training = {k: args[k] for k in TRAIN_FIELDS if k in args}
    load = _load_snippet(hub_class=hub_class, num_classes=num_classes)
    body = [
        f"# {model} (udit reproduction)",
        "",
        _intro(model, hub_class=hub_class),
        "",
        "## License",
        "",
        LICENSE_TEXT,
        "",
        "## Training",
        "",
        f"- model: `{model}`, overrides `{json.dumps(model_kw, sort_keys=True)}`",
        f"- steps: {step}; weights: {'EMA' if weights == 'ema' else 'raw (non-EMA)'}",
        f"- recipe: {json.dumps(training, sort_keys=True)}",
        f"- diffusion: {r.diffusion_steps} steps, linear betas, learned sigma (DiT recipe)",
        "",
        "## Metrics",
        "",
        *_metrics_table(paper, metrics),
        "",
        "## Provenance",
        "",
        f"- checkpoint: `{checkpoint_name}`, sha256 `{checkpoint_sha256}`",
        f"- training options: `{json.dumps(args, sort_keys=True, default=str)}`",
        f"- metrics file sha256: `{metrics_sha256 or 'none given'}`",
        f"- exported by udit-repro commit `{code_commit or 'unknown'}`",
        f"- export check: {check['text']}",
        "",
        "## Load and sample",
        "",
        "```python",
        *load,
        "```",
        "",
        _sampling_note(r),
        "",
    ]
    return front_matter(model=model, conditional=True, hub_class=hub_class) + "\n".join(body)


def _load_snippet(*, hub_class: bool, num_classes: int) -> list[str]:
    lines = ["import torch", "from diffusers import DiTPipeline"]
    if hub_class:
        lines += [
            "import udit.export.hub_model  # registers UDiTTransformer2DModel (pip install udit)"
        ]
    lines += ["", 'pipe = DiTPipeline.from_pretrained("THIS_FOLDER_OR_REPO_ID")']
    if not hub_class:
        lines += [
            "# diffusers' DiT embeds timesteps with 10000^(-k/127); the official DiT, which",
            "# trained these weights, with 10000^(-k/128). This line restores DiT's:",
            "for block in pipe.transformer.transformer_blocks:",
            "    block.norm1.emb.time_proj.downscale_freq_shift = 0",
        ]
    lines += [
        "generator = torch.manual_seed(0)",
        (
            f"images = pipe(class_labels=[0, 1], num_inference_steps=250, guidance_scale=1.0,"
            f" generator=generator).images  # labels in [0, {num_classes})"
        ),
    ]
    return lines
