"""Fashion visual search page: upload, paste or photograph a product, see the most similar ones.

    python demo.py                      # serves models:/<serving.model_name>@champion on 127.0.0.1:7860
    python demo.py --model-uri models:/fashion-visual-search/3 --port 8000

The model is loaded once and shared read-only; each visitor's history lives in gr.State. Catalog
images are served by item id (`/catalog/<item_id>`) and nothing else of the server's disk is: pages
and API answers name images by URL, never by a server path. The public API is `search` alone.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Collection
from pathlib import Path
from urllib.parse import quote

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: works offline

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from fastapi import HTTPException  # noqa: E402
from fastapi.responses import FileResponse  # noqa: E402
from fastapi.routing import APIRoute  # noqa: E402

from harness.tracking.models import load_served  # noqa: E402
from harness.config import compose_config  # noqa: E402
from harness.data.images import BadImage  # noqa: E402
from harness.serving.filters import MAX_FILTER_CHARS, parse_filters  # noqa: E402
from harness.serving.searcher import MAX_UPLOAD_BYTES, SearchOptions, Searcher, decode_upload  # noqa: E402

HINT = "Upload, paste or take a photo, pick a catalog example, or describe the product in words."


def numeric_columns(catalog: pd.DataFrame, skip=("item_id", "path", "width", "height", "year")) -> list[str]:
    """Catalog columns usable as a business score (e.g. margin, stock), or (skip less) to filter on."""
    return [c for c in catalog.columns if c not in skip
            and pd.to_numeric(catalog[c], errors="coerce").notna().mean() > 0.9]


def image_url(base: str, item_id: str) -> str:
    return f"{base.rstrip('/')}/catalog/{quote(str(item_id), safe='')}"


def upload_file(value, uploaded: Collection[str]) -> Path | None:
    """The file a visitor uploaded, as Gradio hands it over.

    `search` takes its inputs unprocessed (so a bad file gets the page's own message), which also means
    Gradio checks nothing: a raw API call can name any server path in the payload, with or without
    FileData's `meta`. So a path is used only if it is, exactly, one that Gradio's own `/upload` route
    wrote for this page (`uploaded`); anything else is refused before any file is touched, so nothing
    about the server's disk (a file's existence, its type) can be learnt. In-process callers pass a Path.
    """
    if value is None:
        return None
    path = value.get("path") if isinstance(value, dict) else value
    if not isinstance(path, str) or path not in uploaded:
        raise BadImage("not a file uploaded to this page")
    return Path(path)


def page_filters(level: str, categories, column: str | None, low, high, extra: str | None) -> dict:
    """The page's filter controls as one `filters` object: the categories picked, a numeric column's
    range (an empty bound is no bound), and any further conditions typed as JSON."""
    filters = dict(parse_filters(extra)) if extra else {}
    if categories:
        if not isinstance(categories, list):
            raise BadImage("the categories must be a list")
        filters[level] = categories
    if column:
        bounds = {}
        for op, value, name in (("ge", low, "lower"), ("le", high, "upper")):
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            try:
                bounds[op] = float(value)
            except (TypeError, ValueError):
                raise BadImage(f"the {name} bound must be a number, got {value!r}") from None
        if bounds:
            filters[column] = bounds
    return filters


def run_search(searcher: Searcher, image, k: int, same_category: bool, rerank_column: str | None,
               rerank_weight: float, history: list, base: str = "", text: str | None = None,
               uploaded: Collection[str] = (), filters=None, text_weight=0.5, collapse=False, items=False,
               point=None):
    """The page's search, by photo, by words, or by both (the words weighted by `text_weight`, negative:
    away from them): (gallery of (image URL, caption), status text, updated per-user history).
    `image`: a Path (in-process) or an upload's FileData, whose path must be among `uploaded` (the files
    Gradio received as uploads); `filters`: which items may be answers (harness.serving.filters);
    `collapse`: one answer per near-duplicate group; `items`: one list per product the photo shows,
    the photo with their numbered boxes first; `point` (x, y): only the item there (a click)."""
    try:
        # Bounds before any file or model is touched: a raw API call can send any k (10^9, 0, "5").
        if not (text is None or isinstance(text, str)):
            raise BadImage("the text must be a string")
        options = SearchOptions.parse(searcher, {"k": k, "within_category": same_category,
                                                 "rerank_column": rerank_column, "rerank_weight": rerank_weight,
                                                 "filters": filters, "collapse_duplicates": collapse}).kwargs()
    except (BadImage, TypeError, ValueError) as exc:
        return [], f"**Cannot search:** {exc}.", history
    words = text.strip() if text else ""
    try:
        query = image if isinstance(image, Path) or image is None else upload_file(image, uploaded)
    except BadImage as exc:
        return [], f"**Cannot use this file:** {str(exc).strip(chr(39))}.", history
    if words and query is not None:
        try:
            table = searcher.search_terms([{"image": query}, {"text": words, "weight": text_weight}], **options)
        except BadImage as exc:
            return [], f"**Cannot search by this photo and these words:** {exc}", history
        described = f" for the photo and “{words}” (weight {text_weight:g})"
    elif words:
        try:
            table = searcher.search_text([words], **options)[0]
        except BadImage as exc:
            return [], f"**Cannot search by these words:** {exc}", history
        described = f" for “{words}”"
    elif query is None:
        return [], HINT, history
    elif items or point is not None:
        try:
            tables = searcher.search_items(query, point=point, **options)
        except BadImage as exc:
            return [], f"**Cannot search this photo's items:** {str(exc).strip(chr(39))}.", history
        boxes = [t["item_box"].iloc[0] for t in tables if len(t)]
        gallery = [(draw_items(decode_upload(query), boxes), f"{len(boxes)} item(s) found: click one on the photo")]
        for n, table in enumerate(tables):
            gallery += answers(searcher, table, base, rerank_column, f"item {n + 1} · " if point is None else "")
        status = (f"The item at ({point[0]:g}, {point[1]:g}): top {len(tables[0])} products." if point is not None
                  else f"{len(tables)} item(s) in the photo, top {options['k']} products each.")
        history = (history + [tables[0]["item_id"].iloc[0]])[-10:] if tables and len(tables[0]) else history
        return gallery, status + f" Your last top-1 results: {', '.join(history)}", history
    else:
        try:
            table = searcher.search([query], **options)[0]
        except BadImage as exc:
            return [], f"**Cannot use this file:** {str(exc).strip(chr(39))}.", history
        described = ""
    gallery = answers(searcher, table, base, rerank_column)
    status = f"Top {len(table)} products{described}."
    if options["filters"]:
        status += f" Filters: `{options['filters']}`."
    if collapse:
        status += " One of each near-duplicate group."
    if same_category:
        status += f" Predicted category: **{table['predicted_category'].iloc[0]}**."
    history = (history + [table["item_id"].iloc[0]])[-10:]
    return gallery, status + f" Your last top-1 results: {', '.join(history)}", history


def answers(searcher: Searcher, table, base: str, rerank_column: str | None, prefix: str = "") -> list:
    """One answer table as the gallery's (image URL, caption) entries."""
    out = []
    for row in table.itertuples():
        caption = " / ".join(str(getattr(row, lv)) for lv in searcher.settings.levels) + f" · sim {row.similarity:.3f}"
        if rerank_column:
            caption += f" · {rerank_column} {row.business_score:g}"
        out.append((image_url(base, row.item_id), f"{prefix}#{row.rank} {row.item_id}: {caption}"))
    return out


def draw_items(img: Image.Image, boxes: list) -> Image.Image:
    """The query photo with each item's box drawn and numbered (1 = the first answer list)."""
    img = img.copy()
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 200))
    for n, (left, top, right, bottom) in enumerate(boxes, start=1):
        draw.rectangle((left, top, right - 1, bottom - 1), outline=(255, 0, 128), width=width)
        draw.text((left + width + 2, top + width + 2), str(n), fill=(255, 0, 128))
    return img


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
    example_ids = catalog["item_id"].iloc[picks].tolist()
    business = numeric_columns(catalog)
    level = searcher.settings.levels[0]

    def filters_of(categories, column, low, high, extra):
        try:
            return page_filters(level, categories, column, low, high, extra), None
        except BadImage as exc:
            return None, f"**Cannot search:** {exc}."

    def find(image, text, k, same_category, rerank_column, rerank_weight, categories, column, low, high, extra,
             text_weight, collapse, items, history, base: str, point=None):
        filters, problem = filters_of(categories, column, low, high, extra)
        if problem:
            return [], problem, history
        try:
            weight = float(text_weight)
        except (TypeError, ValueError):
            return [], f"**Cannot search:** the weight of the words must be a number, got {text_weight!r}.", history
        if not isinstance(items, bool):
            return [], f"**Cannot search:** every item must be true or false, got {items!r}.", history
        return run_search(searcher, image, k, same_category, rerank_column, rerank_weight, history, base, text,
                          demo.upload_file_set, filters, weight, collapse, items, point)

    def search(image, text, k, same_category, rerank_column, rerank_weight, categories, column, low, high, extra,
               text_weight, collapse, items, history, request: gr.Request):
        return find(image, text, k, same_category, rerank_column, rerank_weight, categories, column, low, high,
                    extra, text_weight, collapse, items, history, str(request.base_url))

    def click(image, text, k, same_category, rerank_column, rerank_weight, categories, column, low, high, extra,
              text_weight, collapse, items, history, evt: gr.SelectData, request: gr.Request):
        """A click on the query photo: the item there (the smallest box holding the point) is searched."""
        x, y = evt.index
        return find(image, "", k, same_category, rerank_column, rerank_weight, categories, column, low, high,
                    extra, text_weight, collapse, items, history, str(request.base_url), (float(x), float(y)))

    def show_examples(request: gr.Request):
        return [(image_url(str(request.base_url), i), i) for i in example_ids]

    def pick(k, same_category, rerank_column, rerank_weight, categories, column, low, high, extra, text_weight,
             collapse, items, history, evt: gr.SelectData, request: gr.Request):
        """A catalog example is searched by its id: the page never sends a file name to the server."""
        filters, problem = filters_of(categories, column, low, high, extra)
        if problem:
            return None, [], problem, history
        try:
            [path] = searcher.path_of([example_ids[evt.index]])
        except KeyError:  # removed from the catalog by an index update since the page was built
            return None, [], f"Catalog example {example_ids[evt.index]} is no longer in the catalog.", history
        out = run_search(searcher, Path(path), k, same_category, rerank_column, rerank_weight, history,
                         str(request.base_url), filters=filters, collapse=collapse)
        return (None, *out[:1], f"Query: catalog example {example_ids[evt.index]}. " + out[1], out[2])

    with gr.Blocks(title="Fashion visual search") as demo:
        gr.Markdown("# Fashion visual search\n" + model_card(info, searcher))
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                query = gr.Image(label="Query photo", type="filepath", sources=["upload", "clipboard", "webcam"],
                                 elem_id="query")
                # Words need a backbone with a text tower (OpenCLIP); for the others the box is hidden.
                text = gr.Textbox(label="Or describe it", placeholder="red floral summer dress", max_length=1000,
                                  visible=searcher.can_search_text, elem_id="text")
                # With a photo too: one query of both, the words weighted (negative: "not like this")
                text_weight = gr.Slider(-1, 1, value=0.5, step=0.05, label="Weight of the words beside the photo "
                                        "(negative: away from them)", visible=searcher.can_search_text,
                                        elem_id="text_weight")
                k = gr.Slider(1, 20, value=searcher.settings.k, step=1, label="k")
                same_category = gr.Checkbox(label="Only the predicted category (per-category index)")
                collapse = gr.Checkbox(label="One of each near-duplicate group", visible=searcher.duplicates is not None,
                                       elem_id="collapse")
                # Shop the look: each product found in the photo searched on its own (or click one on the photo)
                items = gr.Checkbox(label="Every item in the photo (or click one)", elem_id="items")
                with gr.Accordion("Business re-ranking", open=False):
                    rerank_column = gr.Dropdown([""] + business, value="", label="Business column")
                    rerank_weight = gr.Slider(0, 1, value=0.0, step=0.05, label="Weight of the business score")
                with gr.Accordion("Filters", open=False):
                    categories = gr.Dropdown(sorted(catalog[level].unique().tolist()), value=[], multiselect=True,
                                             label=f"Only these {level} values", elem_id="filter_categories")
                    with gr.Row():  # bounds as text: an empty box is no bound (and API clients may leave them out)
                        column = gr.Dropdown([""] + numeric_columns(catalog, ("item_id", "path")), value="",
                                             label="Numeric column", elem_id="filter_column")
                        low = gr.Textbox("", label="at least", elem_id="filter_low", max_length=40)
                        high = gr.Textbox("", label="at most", elem_id="filter_high", max_length=40)
                    extra = gr.Textbox("", label="More conditions (JSON)", placeholder='{"colour": ["Red", "Blue"]}',
                                       max_length=MAX_FILTER_CHARS, elem_id="filter_json")
                button = gr.Button("Search", variant="primary", elem_id="search")
                examples_gallery = gr.Gallery(label="Or pick a catalog example", columns=4, height=260,
                                              allow_preview=False, elem_id="examples")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                results = gr.Gallery(label="Most similar products", columns=5, height=520, elem_id="results")
        settings = [k, same_category, rerank_column, rerank_weight, categories, column, low, high, extra, text_weight,
                    collapse, items, history]
        outputs = [results, status, history]
        # Uploads reach `search` unprocessed: an undecodable file gets the page's own message, not
        # Gradio's (which names the server's temporary path).
        button.click(search, [query, text, *settings], outputs, api_name="search", preprocess=False)
        query.upload(search, [query, text, *settings], outputs, api_visibility="private", preprocess=False)
        text.submit(search, [query, text, *settings], outputs, api_visibility="private", preprocess=False)
        query.select(click, [query, text, *settings], outputs, api_visibility="private", preprocess=False)
        examples_gallery.select(pick, settings, [query, *outputs], api_visibility="private")
        demo.load(show_examples, None, examples_gallery, api_visibility="private")
    return demo


def catalog_route(searcher: Searcher) -> APIRoute:
    """GET /catalog/<item_id>: a catalog image by its id, in the version being served; nothing else on
    disk is reachable."""

    def image(item_id: str):
        try:
            [path] = searcher.path_of([item_id])
        except KeyError:
            raise HTTPException(status_code=404, detail="no such catalog item") from None
        return FileResponse(path)

    return APIRoute("/catalog/{item_id:path}", image, methods=["GET"])


def launch(searcher: Searcher, info: dict, host: str = "127.0.0.1", port: int = 7860, **kwargs) -> gr.Blocks:
    """Serve the page (and its `search` API) on host:port; loopback unless told otherwise."""
    demo = build_demo(searcher, info)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, max_file_size=MAX_UPLOAD_BYTES, show_error=True,
        app_kwargs={"routes": [catalog_route(searcher)]}, **kwargs)
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default=None, help="default: models:/<serving.model_name>@champion")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--tracking-uri", default=None, help="default: the project's mlruns/mlflow.db")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. serving.model_name=NAME")
    args = parser.parse_args(argv)
    cfg = compose_config(*([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else []), *args.overrides)
    _, searcher, info = load_served(cfg, args.model_uri)
    launch(searcher, info, args.host, args.port)


if __name__ == "__main__":
    main()
