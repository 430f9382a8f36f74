"""pass@k over k as a PNG (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_pass_at_k(results: dict[str, Any], path: Path) -> Path:
    """Draw results["curve"] (pass@k for k = 1..n) with the greedy and top-log-prob pass@1 as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    curve = {int(k): v for k, v in results["curve"].items()}
    cfg = results["config"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    try:
        ks = sorted(curve)
        ax.plot(
            ks,
            [100 * curve[k] for k in ks],
            marker="o",
            markersize=3,
            label=f"pass@k (T={cfg['temperature']}, top-p={cfg['top_p']})",
        )
        for key, label, style in (
            ("pass_at_1_greedy", "greedy pass@1", "--"),
            ("pass_at_1_top_logprob", "top mean log-prob sample, pass@1", ":"),
            ("pass_at_1_ranked", "LS-ranked sample, pass@1", "-."),
        ):
            if results.get(key) is not None:
                ax.axhline(
                    100 * results[key],
                    linestyle=style,
                    color="gray" if style == "--" else "black",
                    linewidth=1,
                    label=f"{label}: {100 * results[key]:.1f}%",
                )
        if len(ks) > 1:
            ax.set_xscale("log")
        ticks = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if k <= max(ks)] + [max(ks)]
        ax.set_xticks(sorted(set(ticks)), [str(k) for k in sorted(set(ticks))])
        ax.minorticks_off()
        ax.set_xlabel("k (samples)")
        ax.set_ylabel("pass@k (%)")
        values = [100 * v for v in curve.values()] + [
            100 * (results.get(key) or 0)
            for key in ("pass_at_1_greedy", "pass_at_1_top_logprob", "pass_at_1_ranked")
        ]
        ax.set_ylim(0, max(10.0, 1.15 * max(values)))
        ax.set_title(
            f"HumanEval ({results['problems']} problems, n={results['samples_per_problem']}, "
            f"through {cfg['through']})",
            fontsize=10,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
