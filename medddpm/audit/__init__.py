"""``medddpm audit``: does a model reproduce its training scans? (memorisation)

- ``neighbours``: pure functions on volumes: foreground-masked correlation of every query with every
  training volume (and its left-right mirror image), streamed as float32 matrix products in blocks;
  SSIM of given pairs; nearest neighbours by feature cosine;
- ``statistics``: the flagging rule against the held-out baseline, the flagged share's interval,
  Mann-Whitney, authenticity (Alaa et al. 2022) and the verdict: pure functions on numbers;
- ``membership``: the run's own denoising loss on training against held-out scans over a fixed grid of
  timesteps and noises: ROC AUC and its bootstrap interval (with ``--run``);
- ``measure``: three folders -> every number of audit.json, as a typed result;
- ``report``: that result -> report.html (self-contained) and its figures;
- ``audit``: check the folder, measure, render and publish AUDIT_DIR.

Preprocessing and the feature network are those of ``medddpm evaluate`` (medddpm.evaluation.measure,
medddpm.evaluation.features), so both commands compare volumes alike. Within the package each module
imports only those listed before it. May import: ``medddpm.config``, ``errors``, ``runtime``,
``preview``, ``output_folder``, ``data``, ``evaluation``, ``models``, ``diffusion``,
``training.checkpoint`` (the membership signal opens the run's checkpoint).
"""
