"""The lung study's figure: Kaplan–Meier curves of the risk groups the models define.

Theory of operation: the held-out patients of every site are split at the median of each
model's linear predictor into a high- and a low-risk group; lifelines'
``KaplanMeierFitter`` draws each group's survival curve (federated solid, pooled dashed). A
model that separates the curves well ranks patients well, which the C-index measures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from p2pfed.studies.lung_data import Site, pooled


def plot_risk_groups(
    sites: list[Site], models: dict[str, np.ndarray], path: Path, title: str
) -> None:
    """Write the figure to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter

    test = pooled([s.test for s in sites])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"federated": "-", "pooled": "--"}
    for name, beta in models.items():
        score = test.x.astype(np.float64) @ beta
        high = score > np.median(score)
        for group, mask, colour in (
            ("high risk", high, "tab:red"),
            ("low risk", ~high, "tab:blue"),
        ):
            km = KaplanMeierFitter(label=f"{name}: {group} (n={int(mask.sum())})")
            km.fit(test.time[mask], test.event[mask])
            km.plot_survival_function(
                ax=ax, ci_show=False, linestyle=styles.get(name, ":"), color=colour
            )
    ax.set_xlabel("days")
    ax.set_ylabel("survival probability")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
