"""``medddpm evaluate``: feature networks (``features``), metrics as pure functions (``metrics``),
the measurement of two folders (``measure``) and the report a person reads (``report``).

May import: ``medddpm.config``, ``errors``, ``runtime``, ``preview``, ``output_folder``, ``data``.
"""
