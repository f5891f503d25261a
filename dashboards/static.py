"""PNG versions of the sweep figures (matplotlib, no browser needed)."""
from __future__ import annotations

from pathlib import Path


def pareto_png(result, path: Path) -> Path:
    """Every (trial, retention) point faint, each technique's front as a line, the overall front bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (tech, front) in enumerate(sorted(result.per_technique.items())):
        c = colours[i % len(colours)]
        pts = [p for p in result.all_points if p.technique == tech]
        ax.scatter([p.parameters for p in pts], [p.accuracy for p in pts], s=12, color=c, alpha=0.25)
        ax.plot([p.parameters for p in front], [p.accuracy for p in front], "-o", ms=3, color=c, label=tech)
    ax.plot([p.parameters for p in result.overall], [p.accuracy for p in result.overall], "k--", lw=1.5,
            label=f"front (hypervolume {result.hypervolume:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("parameters after truncation (whole model)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
