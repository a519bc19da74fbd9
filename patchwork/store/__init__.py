"""The results store: Zarr layout, templates, chunk-aligned unit writes, ``done`` marks,
provenance (:mod:`~patchwork.store.zarr_store`) and crash repair (:mod:`~patchwork.store.verify`).

Decides nothing about what is computed. May import: ``errors``.
"""
