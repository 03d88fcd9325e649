"""Fashion visual search page: upload, paste or photograph a product, see the most similar ones.

    python demo.py                      # serves models:/fashion-visual-search@champion on 127.0.0.1:7860
    python demo.py --model-uri models:/fashion-visual-search/3 --port 8000

The model is loaded once and shared read-only; each visitor's history lives in gr.State.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: works offline

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness import tracking  # noqa: E402
from harness.config import compose_config  # noqa: E402
from harness.data.images import BadImage  # noqa: E402
from harness.serving.searcher import MAX_UPLOAD_BYTES, Searcher  # noqa: E402

DEFAULT_URI = "models:/fashion-visual-search@champion"


def numeric_columns(catalog: pd.DataFrame) -> list[str]:
    """Catalog columns usable as a business score (e.g. margin, stock)."""
    skip = {"item_id", "path", "width", "height", "year"}
    return [c for c in catalog.columns if c not in skip
            and pd.to_numeric(catalog[c], errors="coerce").notna().mean() > 0.9]


def run_search(searcher: Searcher, image, k: int, same_category: bool, rerank_column: str | None,
               rerank_weight: float, history: list):
    """The page's search: (gallery items, status text, updated per-user history)."""
    if image is None:
        return [], "Upload, paste or take a photo, or pick a catalog example.", history
    try:
        # Gradio hands over the upload as a file in its own cache (it refuses other paths); reading it is
        # asked for explicitly with a Path, which no network client can send.
        table = searcher.search([Path(image)], k=int(k), within_category=same_category,
                                rerank_column=rerank_column or None, rerank_weight=float(rerank_weight))[0]
    except BadImage as exc:
        return [], f"**Cannot use this file:** {exc}.", history
    levels = searcher.settings.levels
    gallery = []
    for row, path in zip(table.itertuples(), searcher.path_of(table["item_id"])):
        caption = " / ".join(str(getattr(row, lv)) for lv in levels) + f" · sim {row.similarity:.3f}"
        if rerank_column:
            caption += f" · {rerank_column} {row.business_score:g}"
        gallery.append((path, f"#{row.rank} {row.item_id}: {caption}"))
    status = f"Top {len(table)} products."
    if same_category:
        status += f" Predicted category: **{table['predicted_category'].iloc[0]}**."
    history = (history + [table["item_id"].iloc[0]])[-10:]
    return gallery, status + f" Your last top-1 results: {', '.join(history)}", history


def model_card(info: dict, searcher: Searcher) -> str:
    s = searcher.settings
    score = {k: v for k, v in (info.get("metrics") or s.run).items() if k.endswith("precision_at_5")}
    scores = ", ".join(f"{k} {v:.3f}" for k, v in score.items() if v is not None)
    return (f"**Model** `{info['model_uri']}` (run {info.get('run_name') or s.run.get('run_name')}, "
            f"{info.get('run_id') or s.run.get('run_id')}): backbone **{s.backbone['arch']}**, layer "
            f"**{s.layer['name']}**, metric **{s.metric['_target_'].rsplit('.', 1)[-1].lower()}**; {scores}. "
            f"Catalog: {len(searcher.catalog)} products.")


def build_demo(searcher: Searcher, info: dict, examples: int = 12, seed: int = 0) -> gr.Blocks:
    catalog = searcher.catalog
    picks = np.random.default_rng(seed).choice(len(catalog), min(examples, len(catalog)), replace=False)
    example_paths = catalog["path"].iloc[picks].tolist()
    business = numeric_columns(catalog)

    def search(image, k, same_category, rerank_column, rerank_weight, history):
        return run_search(searcher, image, k, same_category, rerank_column, rerank_weight, history)

    with gr.Blocks(title="Fashion visual search") as demo:
        gr.Markdown("# Fashion visual search\n" + model_card(info, searcher))
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                query = gr.Image(label="Query photo", type="filepath", sources=["upload", "clipboard", "webcam"],
                                 elem_id="query")
                k = gr.Slider(1, 20, value=searcher.settings.k, step=1, label="k")
                same_category = gr.Checkbox(label="Only the predicted category (per-category index)")
                with gr.Accordion("Business re-ranking", open=False):
                    rerank_column = gr.Dropdown([""] + business, value="", label="Business column")
                    rerank_weight = gr.Slider(0, 1, value=0.0, step=0.05, label="Weight of the business score")
                button = gr.Button("Search", variant="primary", elem_id="search")
                examples_gallery = gr.Gallery(example_paths, label="Or pick a catalog example", columns=4,
                                              height=260, allow_preview=False)
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                results = gr.Gallery(label="Most similar products", columns=5, height=520, elem_id="results")
        inputs = [query, k, same_category, rerank_column, rerank_weight, history]
        outputs = [results, status, history]
        button.click(search, inputs, outputs, api_name="search")
        query.upload(search, inputs, outputs, api_name=False)

        def pick(evt: gr.SelectData):
            return example_paths[evt.index]

        examples_gallery.select(pick, None, query).then(search, inputs, outputs, api_name=False)
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default=DEFAULT_URI)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--tracking-uri", default=None, help="default: the project's mlruns/mlflow.db")
    args = parser.parse_args(argv)
    cfg = compose_config(*([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else []))
    tracking.configure(cfg.tracking)
    _, searcher = tracking.load_model(args.model_uri)
    demo = build_demo(searcher, tracking.model_info(args.model_uri))
    roots = sorted({os.path.dirname(p) for p in searcher.catalog["path"]})  # catalog images only
    demo.queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, allowed_paths=roots,
        max_file_size=MAX_UPLOAD_BYTES, show_error=True)


if __name__ == "__main__":
    main()
