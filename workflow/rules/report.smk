# Summary stage: the FLOPs table, the speed measurement, the report, and the released-checkpoint
# and speed targets.


rule count_flops:
    output:
        json=paths.flops(R),
        csv=f"{R}/flops/flops.csv",
    log:
        f"{R}/logs/count_flops.log",
    benchmark:
        f"{R}/benchmarks/count_flops.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("count_flops"),
    params:
        udit=udit_cmd,
        out=subpath(output.json, parent=True),
    shell:
        # one tracing process per CPU the job was given (its default of 2 oversubscribed --cores 2)
        "{params.udit} flops --out {params.out:q} --jobs {resources.cpus_per_task} > {log:q} 2>&1"


rule measure_speed:
    output:
        paths.speed(R),
    log:
        f"{R}/logs/measure_speed.log",
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("measure_speed"),
    params:
        python=python_cmd,
        args=NODES.speed_args(),
    shell:
        "{params.python} benchmarks/speed.py --json {output:q} {params.args} > {log:q} 2>&1"


rule make_report:
    input:
        metrics=NODES.all_metrics(),
        grids=NODES.all_grids(),
        checkpoints=NODES.final_checkpoints(),
        flops=rules.count_flops.output.json,
        released=NODES.existing_released_metrics(),
        speed=NODES.report_speed(),
    output:
        html="report/index.html",
        figures=report(
            directory("report/figures"),
            patterns=["{name}.png"],
            caption="../captions/figure.rst",
            category="Figures",
        ),
    log:
        f"{R}/logs/make_report.log",
    benchmark:
        f"{R}/benchmarks/make_report.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("make_report"),
    params:
        udit=udit_cmd,
        config=NODES.report_config,
        results=subpath(input.flops, ancestor=2),  # {results}/flops/flops.json -> {results}
    shell:
        "{params.udit} report --configfile {params.config:q} --results {params.results:q}"
        " --out report/ > {log:q} 2>&1"


rule released:
    default_target: False
    # `snakemake released`: sample + evaluate the official checkpoints listed under
    # `released` in the config; missing files stop the run with what to download and where.
    input:
        NODES.released_metrics,
    localrule: True


rule speed:
    default_target: False
    # `snakemake speed`: measure training/sampling speed (Table 11) on this machine or cluster.
    input:
        rules.measure_speed.output,
    localrule: True
