"""Vision pictures for the run report: the most confidently wrong test images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def confidently_wrong(predictions: Sequence[dict[str, Any]], references: Sequence[int], k: int) -> list[dict[str, Any]]:
    """The k wrong predictions with the highest confidence, most confident first."""
    wrong = [dict(p, true=int(r)) for p, r in zip(predictions, references) if p["label"] != r]
    return sorted(wrong, key=lambda p: -p["score"])[:k]


def wrong_grid_png(items: list[dict[str, Any]], images: list[np.ndarray], label_names: Sequence[str],
                   path: Path, title: str) -> Path:
    """A grid of images titled "true: X / pred: Y (confidence)"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(items))
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item, image in zip(axes.flat, items, images):
        ax.imshow(image)
        ax.set_title(f"true: {label_names[item['true']]}\npred: {label_names[item['label']]} ({item['score']:.2f})",
                     fontsize=9, color="firebrick")
    fig.suptitle(title)
    fig.tight_layout(h_pad=1.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
