"""One adapter per architecture family (where the decoder layers, attention, final norm and
unembedding live; which positions are audio, video, text, answer; placeholder checks), the
attention implementations patchwork switches in (:mod:`~patchwork.models.attention`) and attention
blocks as data (:mod:`~patchwork.models.blocks`).

Families are plug-ins (entry point ``patchwork.families``, see :mod:`patchwork.plugins`).
May import: ``errors``, ``plugins``, ``study``, ``data``.
"""
