"""Error analysis artifacts: confusion of query vs neighbour labels, and a gallery of retrievals."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, ImageOps

from harness.data.images import BadImage, read_image
from harness.evaluators.base import EvalContext, Evaluator


class ErrorAnalysis(Evaluator):
    def __init__(self, level: str | None = None, gallery_queries: int = 8, seed: int = 0):
        self.level, self.gallery_queries, self.seed = level, gallery_queries, seed

    def evaluate(self, ctx):
        return {}

    def artifacts(self, ctx: EvalContext):
        level = self.level or ctx.levels[-1]
        found = ctx.indices >= 0
        pairs = pd.DataFrame({
            "query": np.repeat(ctx.query_labels(level), ctx.indices.shape[1])[found.ravel()],
            "neighbour": ctx.neighbour_labels(level)[found]})
        table = pd.crosstab(pairs["query"], pairs["neighbour"])
        return {f"confusion_{level}.csv": table.reset_index(),
                f"confusion_{level}.png": self._heatmap(table, level),
                "retrieval_gallery.png": self._gallery(ctx, level)}

    @staticmethod
    def _heatmap(table: pd.DataFrame, level: str) -> Figure:
        share = table.div(table.sum(axis=1), axis=0)
        side = max(5, 0.28 * max(share.shape))
        fig = Figure(figsize=(side + 1, side))
        ax = fig.subplots()
        im = ax.imshow(share.to_numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(share.shape[1]), share.columns, rotation=90, fontsize=7)
        ax.set_yticks(range(share.shape[0]), share.index, fontsize=7)
        ax.set(xlabel=f"neighbour {level}", ylabel=f"query {level}", title="Share of neighbours per label")
        fig.colorbar(im, ax=ax, fraction=0.04)
        return fig

    def _gallery(self, ctx: EvalContext, level: str) -> Image.Image:
        """One row per seeded query: the query, then its neighbours titled with rank, label and distance
        (green: same label). Drawn with PIL: a grid of subplots costs seconds per run."""
        rng = np.random.default_rng(self.seed)
        picks = rng.choice(len(ctx.query_rows), min(self.gallery_queries, len(ctx.query_rows)), replace=False)
        cols, side, caption = ctx.indices.shape[1] + 1, 128, 26
        sheet = Image.new("RGB", (cols * (side + 4), len(picks) * (side + caption + 4)), "white")
        draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=10)
        labels, paths = ctx.items[level].to_numpy(), ctx.items["path"].to_numpy()
        for r, q in enumerate(picks):
            cells = [(ctx.query_rows[q], "query", None)] + [
                (row, f"#{i + 1}", ctx.distances[q, i]) for i, row in enumerate(ctx.indices[q])]
            for c, (row, tag, dist) in enumerate(cells):
                if row < 0:
                    continue
                x, y = c * (side + 4) + 2, r * (side + caption + 4) + 2
                ok = labels[row] == labels[ctx.query_rows[q]]
                colour = "black" if dist is None else ("green" if ok else "red")
                title = f"{tag} {labels[row]}"
                title = title if len(title) <= 22 else title[:21] + "…"
                text = title + ("" if dist is None else f"\n{dist:.3f}")
                draw.multiline_text((x, y), text, fill=colour, font=font, spacing=1)
                try:
                    thumb = ImageOps.pad(read_image(paths[row])[0], (side, side), color="white")
                except BadImage:
                    continue
                sheet.paste(thumb, (x, y + caption))
        return sheet
