"""Study methods, one module per study ``kind``: activation patching, attention knockout, logit
lens, attention share, probes, base-model comparison. Each is a
:class:`~patchwork.methods.method.Method` that declares the arrays it stores and computes them for
a block of samples.

Methods are plug-ins (entry point ``patchwork.methods``, see :mod:`patchwork.plugins`).
May import every room below: ``patching``, ``loading``, ``models``, ``data``, ``store`` (array
specs), ``study``.
"""
