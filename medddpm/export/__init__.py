"""Datasets for other tools: an nnU-Net v2 raw dataset folder from real and synthetic image / label
pairs (``nnunet``).

May import: ``medddpm.config``, ``errors``, ``output_folder``, ``data``.
"""
