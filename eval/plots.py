"""The one way the eval reports finish a single-axes figure: labels, legend, PNG, close."""

from __future__ import annotations

from pathlib import Path


def save_axes_figure(fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str | None = None,
                     title_size: float | None = None, legend_size: float = 7) -> str:
    """Labels ``ax``, adds its legend, writes ``fig`` to ``path`` (PNG, 110 dpi) and closes it.

    Returns:
      the file name, for the report's list of written files.
    """
    import matplotlib.pyplot as plt
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title, fontsize=title_size)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name
