"""scaling.md, scaling.json and the two plots of a study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eval.plots import save_axes_figure


def write_outputs(doc: dict, out: Path, command: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lopt.io.provenance import commit as _commit

    out.mkdir(parents=True, exist_ok=True)
    doc = dict(doc, commit=_commit(), command=command)
    (out / "scaling.json").write_text(json.dumps(doc, indent=1))
    names, s_vals = doc["optimizers"], list(doc["alpha"])
    n_vals = doc["setup"]["n_values"]
    lines = [f"# Scaling-law study `{doc['variant']}`", "",
             f"alpha of L(N) - floor ~ N^-alpha fitted over N = {n_vals[0]}.."
             f"{min(n_vals[-1], doc['setup'].get('fit_max_n', n_vals[-1]))} (run up to "
             f"{n_vals[-1]}), "
             f"T = {doc['setup']['steps']} steps, M = {doc['setup']['latent_dim']}, "
             f"lambda_k = k^-(1+s), seeds {doc['report_seeds']}, 95% bootstrap CI; commit "
             f"`{doc['commit']}`; command `{command}`; {doc['seconds']:.0f} s.", "",
             "| s | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for s in s_vals:
        lines.append(f"| {s} | " + " | ".join(
            f"{doc['alpha'][s][n]['alpha']:.3f} [{doc['alpha'][s][n]['ci'][0]:.3f}, "
            f"{doc['alpha'][s][n]['ci'][1]:.3f}]" for n in names) + " |")
    (out / "scaling.md").write_text("\n".join(lines) + "\n")

    fig, axs = plt.subplots(1, len(s_vals), figsize=(4.2 * len(s_vals), 3.6), squeeze=False)
    for ax, s in zip(axs[0], s_vals):
        for name in names:
            rows = doc["raw"][s][name]
            ax.plot([r["n"] for r in rows], [np.mean(r["excess_loss"]) for r in rows], "o-",
                    label=f"{name} (α={doc['alpha'][s][name]['alpha']:.2f})", ms=3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"s = {s}")
        ax.set_xlabel("N (parameters)")
        ax.set_ylabel("L - noise floor")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "loss_vs_n.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    sv = [float(s) for s in s_vals]
    for name in names:
        a = [doc["alpha"][s][name]["alpha"] for s in s_vals]
        lo = [doc["alpha"][s][name]["alpha"] - doc["alpha"][s][name]["ci"][0] for s in s_vals]
        hi = [doc["alpha"][s][name]["ci"][1] - doc["alpha"][s][name]["alpha"] for s in s_vals]
        ax.errorbar(sv, a, yerr=[lo, hi], marker="o", capsize=3, label=name)
    save_axes_figure(fig, ax, out / "alpha_vs_s.png", xlabel="spectral condition s",
                     ylabel="alpha")
    return ["scaling.md", "scaling.json", "loss_vs_n.png", "alpha_vs_s.png"]
