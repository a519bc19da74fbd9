"""What a study runs on: its model (:func:`~patchwork.loading.model.load_model` — the shipped
testbed, a local safetensors checkpoint of a registered family, or a random-init config) and its
samples (:mod:`~patchwork.loading.generators`, :mod:`~patchwork.loading.manifest`).

May import: ``errors``, ``plugins``, ``study``, ``store``, ``data``, ``models``, ``testbed``.
"""
