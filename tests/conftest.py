"""Shared test setup: one CPU thread, fixed seeds, tiny models."""

from __future__ import annotations

import os

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
torch.manual_seed(0)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
