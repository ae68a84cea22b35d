"""The report of scripts/compare_embedded.sh: the ablation table (mean and spread over the seeds each variant ran), a
plot of probe accuracy against AR step for every variant, and the variants' final sample grids side by side.

    python scripts/compare_embedded_report.py runs/compare "0 1 2" baseline masked split ...
"""

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import PIL.Image
import PIL.ImageDraw

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def variant_results(out: Path, variant: str, seeds: list[str]) -> list[dict]:
    """Per finished seed: sample accuracy (overall, worst class), FID (or its unreliable value), probe per step, and
    the final grid."""
    found = []
    for seed in seeds:
        run = out / f"{variant}-{seed}"
        if not (run / "generation.json").is_file() or not (run / "probe" / "probe.json").is_file():
            continue
        generation = next(iter(json.loads((run / "generation.json").read_text())["samples"].values()))
        fid = generation["fid"] if generation["fid"] is not None else generation["unreliable"]["fid"]["value"]
        probe = {int(step): top1 for step, top1 in json.loads((run / "probe" / "probe.json").read_text())["top1"].items()}
        grids = sorted((run / "samples").glob("samples-*.png"))
        found.append({"seed": seed, "accuracy": generation["sample_accuracy"], "fid": fid, "probe": probe,
                      "worst_class": min(generation["per_class"].values()),
                      "fid_reliable": generation["fid"] is not None, "grid": grids[-1] if grids else None})
    return found


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = np.array(values) * scale
    return f"{values.mean():.{digits}f}" + (f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else "")


def main() -> None:
    out, seeds, variants = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3:]
    results = {variant: variant_results(out, variant, seeds) for variant in variants}
    results = {variant: runs for variant, runs in results.items() if runs}
    lines = ["| variant | seeds | sample accuracy (%) | worst class (%) | FID (EffNet) | probe, last step (%) | "
             "probe, best step (%) |", "|---|---|---|---|---|---|---|"]
    for variant, runs in results.items():
        last = max(runs[0]["probe"])
        best = [max(run["probe"].values()) for run in runs]
        best_steps = "/".join(str(max(run["probe"], key=run["probe"].get)) for run in runs)
        marker = "" if all(run["fid_reliable"] for run in runs) else " (unreliable)"
        lines.append(f"| {variant} | {','.join(run['seed'] for run in runs)} | {spread([r['accuracy'] for r in runs], 100)} | "
                     f"{spread([r['worst_class'] for r in runs], 100)} | {spread([r['fid'] for r in runs], digits=2)}{marker} | "
                     f"{spread([r['probe'][last] for r in runs], 100)} | {spread(best, 100)} (step {best_steps}) |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for variant, runs in results.items():
        steps = sorted(runs[0]["probe"])
        mean = np.mean([[run["probe"][step] for step in steps] for run in runs], axis=0)
        axis.plot(steps, 100 * mean, marker=".", label=f"{variant} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
    axis.set_xlabel("AR step (image tokens seen + 1)")
    axis.set_ylabel("linear probe top-1 (%), layer 2")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(out / "probe.png", dpi=120)

    grids = [(variant, PIL.Image.open(runs[0]["grid"])) for variant, runs in results.items() if runs[0]["grid"]]
    if grids:
        width, height = sum(g.width for _, g in grids) + 8 * len(grids), max(g.height for _, g in grids) + 20
        sheet = PIL.Image.new("RGB", (width, height), "white")
        draw, left = PIL.ImageDraw.Draw(sheet), 0
        for variant, grid in grids:
            draw.text((left + 4, 4), f"{variant} (seed {results[variant][0]['seed']})", fill="black")
            sheet.paste(grid, (left, 20))
            left += grid.width + 8
        sheet.save(out / "grids.png")
    print(f"wrote {out / 'table.md'}, {out / 'probe.png'} and {out / 'grids.png'}")


if __name__ == "__main__":
    main()
