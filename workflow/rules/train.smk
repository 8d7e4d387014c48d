# Training stage: one run folder per experiment, one node per milestone checkpoint.
#
# The node for milestone m trains from the previous milestone (its input) to m and stops
# (--stop-at m), so 1M continues the 400K run instead of retraining, and each job is short
# enough for a cluster time limit. Requeue-safe: a node that dies leaves its marker file, and
# the retried job resumes from the newest checkpoint (--resume auto). A node that starts
# without the marker (first run, or --forcerun) first drops every checkpoint past the
# milestone it starts from, so it really retrains that stretch and nothing else.


rule train:
    input:
        unpack(train_inputs),
    output:
        f"{R}/{{experiment}}/train/checkpoints/ckpt-{{step}}.pt",
    log:
        f"{R}/logs/train/{{experiment}}-{{step}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{experiment}}-{{step}}.tsv"
    params:
        udit=udit_cmd,
        torchrun=torchrun_cmd,
        args=train_args,
        workers=loader_workers,
        start=train_start,
        run_dir=f"{R}/{{experiment}}/train",
    resources:
        **resources_for("train"),
    conda:
        "../../environment.yml"
    shell:
        """
        marker={params.run_dir}/.node-{wildcards.step}.incomplete
        mkdir -p {params.run_dir}/checkpoints
        if [ ! -e "$marker" ]; then
            for f in {params.run_dir}/checkpoints/ckpt-*; do
                [ -e "$f" ] || continue
                s=${{f##*/ckpt-}}; s=${{s%%.*}}
                if [ $((10#$s)) -gt {params.start} ]; then rm -f "$f"; fi
            done
            touch "$marker"
        fi
        # torchrun with the GPUs this job was granted (and can see); plain CLI on CPU
        gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        if [ "$gpus" -gt {resources.gpu} ]; then gpus={resources.gpu}; fi
        if [ "$gpus" -gt 0 ]; then
            {params.torchrun} --nproc_per_node=$gpus -m udit.cli train {params.args} --num-workers {params.workers} > {log} 2>&1
        else
            {params.udit} train {params.args} --num-workers {params.workers} > {log} 2>&1
        fi
        rm -f "$marker"
        """
