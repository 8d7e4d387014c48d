"""Sample-quality metrics (FID, sFID, IS, precision, recall, KID), ADM protocol, via torch-fidelity.

inception.py  feature extractor (pool_3, logits, sFID map) registered with torch-fidelity
npz.py        memory-mapped ADM npz image batches
scores.py     every metric from features, with torch-fidelity's metric functions
reference.py  `udit build-reference`: ADM-format reference npz from an image folder
evaluate.py   `udit evaluate`: metrics JSON with protocol and provenance
provenance.py versions, hashes, official-weights check, atomic writes
"""
