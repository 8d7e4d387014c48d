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
        **resources_for("count_flops"),
    params:
        udit=udit_cmd,
        out=subpath(output.json, parent=True),
    shell:
        # one tracing process per CPU the job was given (its default of 2 oversubscribed --cores 2)
        "{params.udit} flops --out {params.out:q} --jobs {resources.cpus_per_task} > {log:q} 2>&1"


rule measure_speed:
    output:
        SPEED_JSON,
    log:
        f"{R}/logs/measure_speed.log",
    conda:
        "../../environment.yml"
    resources:
        **resources_for("measure_speed"),
    params:
        python=python_cmd,
        args=speed_args(),
    shell:
        "{params.python} benchmarks/speed.py --json {output:q} {params.args} > {log:q} 2>&1"


rule make_report:
    input:
        metrics=all_metrics(),
        grids=all_grids(),
        checkpoints=final_checkpoints(),
        flops=rules.count_flops.output.json,
        released=existing_released_metrics(),
        speed=report_speed(),
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
        **resources_for("make_report"),
    params:
        udit=udit_cmd,
        config=report_config,
        results=results_dir,
    shell:
        "{params.udit} report --configfile {params.config:q} --results {params.results:q}"
        " --out report/ > {log:q} 2>&1"


rule released:
    default_target: False
    # `snakemake released`: sample + evaluate the official checkpoints listed under
    # `released` in the config; missing files stop the run with what to download and where.
    input:
        released_metrics,
    localrule: True


rule speed:
    default_target: False
    # `snakemake speed`: measure training/sampling speed (Table 11) on this machine or cluster.
    input:
        rules.measure_speed.output,
    localrule: True
