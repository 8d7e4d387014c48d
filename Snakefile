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
from snakemake.utils import min_version

min_version("9.0")


# The default configfile only when none is given: Snakemake would otherwise deep-merge a
# --configfile into it (smoke keys leaking into the paper run).
if not workflow.overwrite_configfiles:

    configfile: "config/smoke.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


wildcard_constraints:
    experiment=r"[a-z0-9][a-z0-9-]*",
    dataset=r"[a-z0-9][a-z0-9-]*",
    step=STEP_WILDCARD,
    cfg=r"\d+\.\d+",


rule all:
    input:
        "report/index.html",
    default_target: True
    localrule: True
