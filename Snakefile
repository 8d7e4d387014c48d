# udit-repro: the whole U-DiT paper as one DAG (Tian et al., NeurIPS 2024, arXiv 2405.02730).
#
#   snakemake --cores 2                                    # embedded default: config/smoke.yaml
#   snakemake --configfile config/paper.yaml -n            # every paper node, nothing run
#   snakemake --configfile config/paper.yaml --profile slurm   # the paper on a SLURM cluster
#   snakemake released --configfile config/paper.yaml      # official checkpoints only
#   snakemake results/ablation-cosine/metrics/0000016-cfg1.0.json --forcerun train
#                                                         # re-run one ablation node only
#
# This file only wires; experiments are data (config/*.yaml, checked against
# workflow/schemas/config.schema.yaml) resolved by udit.experiments.
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from udit.experiments import ConfigError, load_yaml

min_version("9.0")


# The default configfile only when none is given: Snakemake would otherwise deep-merge a
# --configfile into it (smoke keys leaking into the paper run).
if not workflow.overwrite_configfiles:
    try:  # Snakemake's own YAML error names neither the file nor the line
        load_yaml("config/smoke.yaml")
    except ConfigError as err:
        raise WorkflowError(f"invalid config: {err}") from None

    configfile: "config/smoke.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/export.smk"


# Reference batches, Inception weights, VAE and ImageNet the jobs about to run read: checked
# here, after the DAG is built and before any job (none of it in a dry run).
onstart:
    hold_results_lock()
    check_external_inputs(workflow.dag)


onsuccess:
    RESULTS_LOCK.close()


onerror:
    RESULTS_LOCK.close()


wildcard_constraints:
    experiment=r"[a-z0-9][a-z0-9-]*",
    dataset=r"[a-z0-9][a-z0-9-]*",
    step=paths.STEP_TAG,
    tag=paths.EVAL_TAG,


rule all:
    default_target: True
    input:
        "report/index.html",
    localrule: True
