# Paths and input functions of the export stage (functions only, no rules: workflow/rules/
# export.smk, which includes this file, holds the rules).

EXPORT_DIR = "export"
# Peak memory of one export (checkpoint with model, EMA and optimizer state, the diffusers copy
# and the VAE) by size class; the config's `resources` table has no export entry.
EXPORT_MEM_MB = {"toy": 4000, "S": 8000, "B": 16000, "L": 32000, "XL": 48000}


def export_path(experiment_id, step):
    """{results}/{experiment}/export/{step}: the DiTPipeline folder of one milestone."""
    return f"{R}/{experiment_id}/{EXPORT_DIR}/{paths.step_tag(step)}"


def exportable(exp):
    """Only latent-space runs: DiTPipeline decodes latents with the run's VAE."""
    return bool(DATASETS[exp.dataset].get("vae"))


def all_exports():
    return [
        export_path(eid, step)
        for eid, exp in EXPERIMENTS.items()
        if exportable(exp)
        for step in exp.milestones
    ]


def export_experiment(wildcards):
    """The experiment of an export node (clear error for one the DAG cannot export)."""
    exp = EXPERIMENTS.get(wildcards.experiment)
    if exp is None:
        raise WorkflowError(
            f"export: {wildcards.experiment!r} is not a trained experiment of this config "
            f"(released checkpoints: `udit export --model NAME --vae VAE`); known: "
            f"{', '.join(EXPERIMENTS)}"
        )
    if not exportable(exp):
        raise WorkflowError(
            f"export: {exp.id} trains on pixels (dataset {exp.dataset} has no vae); "
            "DiTPipeline only drives latent-space models"
        )
    if wildcards.step == paths.RELEASED_STEP or int(wildcards.step) not in TRAIN_STEPS[exp.id]:
        raise WorkflowError(
            f"export: {exp.id} has no training node at step {wildcards.step} "
            f"(steps: {TRAIN_STEPS[exp.id]})"
        )
    return exp


def card_evaluation(exp, step):
    """The unguided (cfg 1.0) evaluation of `step`, the card's metrics; None if there is none
    (the card compares with the paper's unguided rows, so guided metrics are never shown)."""
    return next((e for e in exp.evaluations if e.step == step and e.cfg == 1.0), None)


def export_inputs(wildcards):
    exp = export_experiment(wildcards)
    step = int(wildcards.step)
    inputs = {"checkpoint": checkpoint_path(exp.id, step), "vae": vae_input(exp.dataset)}
    evaluation_ = card_evaluation(exp, step)
    if evaluation_ is not None:
        inputs["metrics"] = metrics_path(exp.id, evaluation_)
    return inputs


def export_args(wildcards, input):
    """--vae (as `udit sample` gets it); --metrics and the paper row where the DAG evaluates
    the milestone unguided; shell-quoted."""
    exp = export_experiment(wildcards)
    args = ["--vae", vae_of(exp.dataset)]
    if "metrics" in input.keys():
        args += ["--metrics", input.metrics]
        paper = card_evaluation(exp, int(wildcards.step)).paper
        if paper:  # the paper row this milestone reproduces: the card's paper column
            args += ["--paper-table", paper[0].table, "--paper-row", paper[0].row]
            args += ["--paper-key", paper[0].key] if paper[0].key else []
    return shlex.join(args)


def export_mem_mb(wildcards, attempt):
    size = size_of(wildcards)
    value = EXPORT_MEM_MB.get(size, RESOURCE_FALLBACK["mem_mb"])
    return plan.scaled("mem_mb", value, attempt, plan.partition_limits(CONFIG, "export", size))


EXPORT_RESOURCES = resources_for("export") | {"mem_mb": export_mem_mb}
# a hub VAE an export job reads is checked before the first job (onstart, common.smk)
EXTERNAL_NEEDS["export_checkpoint"] = ("vae",)
