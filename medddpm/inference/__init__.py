"""``medddpm sample``: synthetic scans from a checkpoint into a folder, with a manifest
(``sample_to_folder``).

May import: ``medddpm.config``, ``errors``, ``runtime``, ``preview``, ``output_folder``, ``data``, ``models``,
``diffusion``, ``training.checkpoint`` (to open checkpoints).
"""
