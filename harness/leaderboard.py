"""python -m harness.leaderboard: one table of every configuration on every dataset, with its cost.

Reads the result cards (card.json) of the runs in the tracking store. One row per (backbone, weights,
layer, preprocessing, projection, metric); one column per dataset version (its name and catalog
digest, so scores from two versions of a catalog never share a column) holding the dataset's main
score (same-product Recall@1 where measured, else precision at k on the finest level) with its 95 %
interval; cost columns from the newest card of the row (images/s from any run of the same extractor
where the row's own runs read every feature from the store). Writes leaderboard.md, .csv and a plot of
quality against images/s with its Pareto frontier (no other point is both better and faster).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.config import ROOT, compose_config
from harness.errors import HarnessError
from harness.machine import describe_machine
from harness.tracking import build_tracker
from harness.tracking.sweeps import result_cards

KEY = ["backbone", "weights", "layer", "preprocess", "projection", "metric"]
COST = ["parameters", "feature_dim", "bytes_per_item", "images_per_second", "query_p50_ms"]


def main_score(card: dict) -> tuple[str, dict] | None:
    scores = card.get("scores", {})
    if "product_recall_at_1" in scores:
        return "product_recall_at_1", scores["product_recall_at_1"]
    precision = [name for name in scores if "_precision_at_" in name]
    return (precision[-1], scores[precision[-1]]) if precision else None


def build(cards: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """(table, its dataset columns) from cards, oldest first: a later card of a cell replaces an earlier one."""
    rows, columns = {}, []
    for card in cards:
        score = main_score(card)
        catalog = card.get("dataset", {}).get("catalog")
        if score is None or catalog is None:
            continue
        key = tuple(str(card["model"].get(k)) for k in KEY)
        column = f"{catalog['name']} [{catalog['digest']}] {score[0]}"
        if column not in columns:
            columns.append(column)
        row = rows.setdefault(key, dict(zip(KEY, key)))
        row[column] = score[1]["value"]
        row[f"{column} low"], row[f"{column} high"] = score[1].get("low"), score[1].get("high")
        for c in COST:
            if card["cost"].get(c) is not None:
                row[c] = card["cost"][c]
        row["machine"] = describe_machine(card["cost"]["machine"])
    table = pd.DataFrame(list(rows.values()))
    if table.empty:
        return table, columns
    for c in COST:
        if c not in table:
            table[c] = np.nan
    # Throughput is the extractor's, whatever the metric: a run whose features all came from the store
    # (a metric sweep extracts once) shows the rate another run of the same extractor measured.
    extractor = ["backbone", "weights", "layer", "preprocess"]
    table["images_per_second"] = table.groupby(extractor)["images_per_second"].transform(lambda v: v.fillna(v.max()))
    return table.sort_values(columns[0], ascending=False, na_position="last").reset_index(drop=True), columns


def pareto_front(quality: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """Points no other point beats on both (higher quality and higher speed, one of them strictly)."""
    quality, speed = np.asarray(quality, float), np.asarray(speed, float)
    front = np.ones(len(quality), dtype=bool)
    for i in range(len(quality)):
        better = (quality >= quality[i]) & (speed >= speed[i]) & ((quality > quality[i]) | (speed > speed[i]))
        front[i] = not better.any()
    return front


def markdown(table: pd.DataFrame, columns: list[str]) -> str:
    head = [*KEY, *columns, "parameters", "dim", "B/item", "images/s", "query p50 ms", "machine"]
    lines = ["# Leaderboard", "", "Scores: the dataset's main score [95 % bootstrap interval over queries]; "
             "cost from the row's newest run. Columns are dataset versions (catalog digest).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def number(v, fmt):
        return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

    for r in table.to_dict("records"):
        cells = [str(r[k]) for k in KEY]
        for c in columns:
            v = r.get(c)
            if v is None or np.isnan(v):
                cells.append("–")
            else:
                low, high = r.get(f"{c} low"), r.get(f"{c} high")
                cells.append(f"{v:.4f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None and not np.isnan(low) else ""))
        cells += [number(r["parameters"], ",.0f"), number(r["feature_dim"], ".0f"), number(r["bytes_per_item"], ".0f"),
                  number(r["images_per_second"], ".1f"), number(r["query_p50_ms"], ".2f"), str(r.get("machine", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n![quality against speed](leaderboard.png)\n"


def plot(table: pd.DataFrame, column: str) -> Figure:
    """Each extractor (backbone, weights, layer, preprocessing) at its best row, quality against speed."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    known = table[table[column].notna() & table["images_per_second"].notna()]
    known = known.sort_values(column, ascending=False).drop_duplicates(["backbone", "weights", "layer", "preprocess"])
    if len(known):
        front = pareto_front(known[column].to_numpy(), known["images_per_second"].to_numpy())
        ax.scatter(known["images_per_second"], known[column], c=np.where(front, "tab:red", "tab:blue"), zorder=3)
        edge = known[front].sort_values("images_per_second")
        ax.step(edge["images_per_second"], edge[column], where="pre", color="tab:red", lw=1, label="Pareto frontier")
        for n, r in enumerate(known.sort_values("images_per_second").to_dict("records")):
            label = f"{r['backbone']}{' (random weights)' if r['weights'] == 'random' else ''}, {r['metric']}"
            ax.annotate(label, (r["images_per_second"], r[column]), fontsize=7, xytext=(4, 6 if n % 2 else -10),
                        textcoords="offset points")  # neighbours alternate above and below
        ax.legend(fontsize=8, loc="upper left")
    ax.set(xlabel="images/s (extraction incl. decoding, this machine)", ylabel=column.rsplit("] ", 1)[-1],
           title=column.split(" [")[0] + " (best metric per extractor)", xscale="log" if len(known) > 1 else "linear")
    ax.margins(x=0.25, y=0.1)
    fig.tight_layout()
    return fig


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m harness.leaderboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "leaderboard")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. tracking.experiment=NAME")
    args = parser.parse_args(argv)
    tracker = build_tracker(compose_config(*args.overrides))
    with tempfile.TemporaryDirectory() as tmp:
        cards = result_cards(tracker, Path(tmp))
    table, columns = build(cards)
    if table.empty:
        raise HarnessError("no run in the tracking store has a result card (card.json): run the harness first.")
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "leaderboard.csv", index=False)
    (args.out / "leaderboard.md").write_text(markdown(table, columns))
    plot(table, columns[0]).savefig(args.out / "leaderboard.png", dpi=110)
    print(f"leaderboard: {args.out / 'leaderboard.md'} ({len(table)} rows, {len(columns)} dataset columns)")
    return args.out / "leaderboard.md"


if __name__ == "__main__":
    try:
        main()
    except HarnessError as exc:
        raise SystemExit(f"error: {exc}") from None
