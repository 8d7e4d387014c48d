"""`udit sample`: class-conditional samples into an ADM-format .npz, resumable, DDP-ready.

cli.py         build_parser and main (`udit sample`, `torchrun -m udit.sampling`)
options.py     SampleOptions: the options, their ranges, the config a sample depends on
checkpoint.py  the checkpoint: sidecar check, safe load, its model options, model and VAE
sampler.py     sample_batch: one batch, a pure function of (seed, indices) and the model
batches.py     batches(): a generator of batches over sample_batch
shards.py      OUT.parts/: finished shards, the claim of the missing indices, assembly
generate.py    generate(): setup, resolve, claim, loop, assemble

Output (the format the ADM evaluator of guided-diffusion reads, and DiT's sample_ddp.py writes):
`arr_0` uint8 (N, H, W, 3) NHWC and `arr_1` int64 (N,) class labels, plus a PNG grid of the
first samples and OUT.json with the resolved options. Sample i depends only on (seed, i), so a
run killed or stopped (SIGUSR1) resumes from its shards to the same bytes, and the batch size and
number of processes do not change the samples.
"""
