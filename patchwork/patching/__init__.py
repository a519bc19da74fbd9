"""The machinery of patched runs that methods share: batched conditions
(:mod:`~patchwork.patching.patcher`), the exact fast path that resumes a run at its patched layer
(:mod:`~patchwork.patching.partial_forward`), attribution patching and its AtP* corrections
(:mod:`~patchwork.patching.attribution`, :mod:`~patchwork.patching.atp_star`) and the answer
metrics (:mod:`~patchwork.patching.metrics`).

Writes nothing and knows no study kinds. May import every room below ``methods``.
"""
