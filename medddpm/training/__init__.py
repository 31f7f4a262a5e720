"""``medddpm train``: the loop (``loop``) and checkpoints on disk (``checkpoint``).

May import: ``medddpm.config``, ``errors``, ``runtime``, ``preview``, ``output_folder``, ``data``, ``models``,
``diffusion``.
"""
