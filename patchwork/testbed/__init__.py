"""The embedded default model: a small Qwen2.5-Omni thinker trained on a synthetic audio-visual
world so that it shows vision dominance (see ``docs/testbed.md``).

- :func:`checkpoint_path` — where a shipped checkpoint lives (``testbed``, ``testbed-base``,
  ``testbed-windowed``);
- :func:`load` — the model (eval mode, planted windows installed) and its tokenizer;
- :func:`make_samples` — held-out samples with named runs, media written as wav/png files.
"""

from patchwork.testbed.model import checkpoint_path, load
from patchwork.testbed.samples import make_samples

__all__ = ["checkpoint_path", "load", "make_samples"]
