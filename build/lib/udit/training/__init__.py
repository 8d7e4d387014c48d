"""`udit train`: the DiT / U-DiT training recipe, one job per module.

loop.py         TrainOptions, train_step, the training loop and the CLI (`udit train`)
store.py        the run folder: atomic checkpoints, verify / rotate / resume, options, log
ema.py          EMA of the weights (exact copy, then decay 0.9999)
determinism.py  data order and per-sample randomness (step-exact, GPU-count independent)
data.py         training inputs: latent cache, online VAE encoding, or pixels
"""
