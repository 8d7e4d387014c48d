# Training stage: one run folder per experiment, one node per milestone checkpoint, plus chunk
# nodes where a stretch between milestones would outlast its partition's max_job_hours
# (TRAIN_STEPS, from udit.plan.train_steps).
#
# The node for step m trains from the previous milestone or chunk end (its input) to m and
# stops (--stop-at m), so 1M continues the 400K run instead of retraining, and each job fits
# the cluster's time limit. Requeue-safe: a node that dies leaves its marker file, and
# the retried job resumes from the newest checkpoint (--resume auto). A node that starts
# without the marker (first run, or --forcerun) first drops every checkpoint past the step it
# starts from, so it really retrains that stretch and nothing else (`--forcerun` of a milestone
# re-runs its last chunk and everything downstream of it).


rule train:
    input:
        unpack(NODES.train_inputs),
    output:
        paths.checkpoint(R, "{experiment}", "{step}"),
    log:
        f"{R}/logs/train/{{experiment}}-{{step}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{experiment}}-{{step}}.tsv"
    conda:
        "../../environment.yml"
    resources:
        **NODES.resources_for("train"),
    params:
        launch=LAUNCH,
        python=PYTHON,
        udit=udit_cmd,
        threads=rank_threads,
        options=NODES.train_options,
        start=NODES.train_start,
        run_dir=paths.train_dir(R, "{experiment}"),
    shell:
        """
        {params.udit} begin-node --run-dir {params.run_dir:q} --step {wildcards.step} \
            --from {params.start} >{log:q} 2>&1
        # torchrun over the job's GPUs (and nodes), SIGUSR1 before the time limit: the job then
        # exits 75 after checkpointing its step, and the retry resumes from that checkpoint
        {params.launch} {resources.nodes} {resources.gpu} {params.threads} {resources.stop_lead_s} \
            {params.python} train --options {params.options:q} >>{log:q} 2>&1
        """
