"""``medddpm train``: the run top to bottom (``loop``), the learner and its resumable state
(``learner``), checkpoints on disk (``checkpoint``), what a run records as it goes (``monitor``:
metrics.csv, tensorboard, previews) and when it stops early (``stopping``: Ctrl-C, SIGTERM, time).
``medddpm train-autoencoder`` (``autoencoder``) runs the same loop with another learner and step.

May import: ``medddpm.config``, ``errors``, ``runtime``, ``preview``, ``output_folder``, ``data``, ``models``,
``diffusion``, ``evaluation.features`` (the perceptual loss's MedicalNet ResNet) and
``evaluation.reconstruction`` (held-out reconstruction measures).
"""
