# Summary stage: the FLOPs table, the report, and the released-checkpoint target.


rule count_flops:
    output:
        json=f"{R}/flops/flops.json",
        csv=f"{R}/flops/flops.csv",
    log:
        f"{R}/logs/count_flops.log",
    benchmark:
        f"{R}/benchmarks/count_flops.tsv"
    params:
        udit=udit_cmd,
        out=subpath(output.json, parent=True),
    resources:
        **resources_for("count_flops"),
    conda:
        "../../environment.yml"
    shell:
        # one tracing process per CPU the job was given (its default of 2 oversubscribed --cores 2)
        "{params.udit} flops --out-dir {params.out} --jobs {resources.cpus_per_task} > {log} 2>&1"


rule make_report:
    input:
        metrics=all_metrics(),
        grids=all_grids(),
        checkpoints=final_checkpoints(),
        flops=rules.count_flops.output.json,
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
    params:
        udit=udit_cmd,
        config=report_config,
        results=results_dir,
    resources:
        **resources_for("make_report"),
    conda:
        "../../environment.yml"
    shell:
        "{params.udit} report --config {params.config} --results {params.results} --out report/ > {log} 2>&1"


rule released:
    # `snakemake released`: sample + evaluate the official checkpoints listed under
    # `released` in the config; missing files stop the run with what to download and where.
    input:
        released_metrics,
    default_target: False
    localrule: True
