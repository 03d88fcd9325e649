"""Public benchmarks by one YAML: each format's exact file layout written small in tmp_path, its
protocol (queries, gallery, self-matches) checked exactly, and Recall@k against a hand table.

Embeddings are given by hand (a point on a line per photo, euclidean), so each ranking is known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.config import instantiate
from harness.errors import HarnessError
from harness.evaluate import evaluate
from harness.evaluators.product import ProductRecall
from harness.metrics import Euclidean


def write_images(root, paths):
    for n, rel in enumerate(paths):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 32), (n * 20 % 255, 80, 160)).save(path)


def listing(path, header, rows, counted=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([str(len(rows))] if counted else []) + [header] + [" ".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def scored(cfg, x: dict, ks):
    """The dataset's catalog through its protocol; Recall@k with photo → x on a line."""
    catalog = instantiate(cfg.dataset).load()
    catalog, folds = instantiate(cfg.protocol).split(catalog)
    emb = np.array([[x[i], 0.0] for i in catalog.items["item_id"]], dtype=np.float32)
    result = evaluate(emb, catalog, folds, Euclidean(), [ProductRecall(ks)], 1)
    return catalog, folds, result


def ids(catalog, rows):
    return sorted(catalog.items["item_id"].iloc[rows])


def test_inshop(tmp_path, cfg_factory):
    # items A-D, three photos each: status per photo; the train ones are not searched
    status = {"A": ["query", "gallery", "train"], "B": ["query", "gallery", "gallery"],
              "C": ["query", "gallery", "train"], "D": ["gallery", "gallery", "query"]}
    rows = [(f"img/WOMEN/Dresses/id_0000000{n}/0{p + 1}_1_front.jpg", f"id_0000000{n}", s)
            for n, (item, states) in enumerate(status.items()) for p, s in enumerate(states)]
    listing(tmp_path / "Eval/list_eval_partition.txt", "image_name item_id evaluation_status", rows)
    listing(tmp_path / "Anno/list_bbox_inshop.txt", "image_name clothes_type pose_type x_1 y_1 x_2 y_2",
            [(r[0], "1", "1", "2", "3", "20", "30") for r in rows])
    write_images(tmp_path, [r[0] for r in rows])
    cfg = cfg_factory("dataset=inshop", f"dataset.root={tmp_path}")
    assert cfg.protocol._target_.endswith("Predefined") and list(cfg.evaluator) == ["precision", "product"]
    assert list(cfg.evaluator.product.ks) == [1, 5, 10, 20, 30, 40, 50]   # as published
    name = {f"{item.lower()}{p + 1}": rows[n * 3 + p][0] for n, item in enumerate(status) for p in range(3)}
    # gallery a2 0, b2 10, b3 11, c2 20, d1 30, d2 31; queries: a1 1 → a2 first (rank 1);
    # b1 19 → c2, b3 (rank 2); c1 26 → d1, d2, c2 (rank 3); d3 14 → b3, b2, c2, a2, d1 (rank 5)
    x = {name[k]: v for k, v in dict(a1=1, a2=0, b1=19, b2=10, b3=11, c1=26, c2=20, d1=30, d2=31, d3=14).items()}
    catalog, [fold], result = scored(cfg, x, [1, 2, 3, 5])
    assert ids(catalog, fold.query_idx) == sorted(name[k] for k in ("a1", "b1", "c1", "d3"))
    assert ids(catalog, fold.ref_idx) == sorted(name[k] for k in ("a2", "b2", "b3", "c2", "d1", "d2"))
    assert not fold.self_match and len(catalog) == 10                       # train photos left out
    m = result.metrics
    assert [m[f"product_recall_at_{k}"] for k in (1, 2, 3, 5)] == [0.25, 0.5, 0.75, 1.0]
    assert catalog.items.set_index("item_id").loc[name["a1"], ["category", "subcategory", "x_2"]].tolist() == ["WOMEN", "Dresses", "20"]


def test_sop_is_all_versus_all_without_self_matches(tmp_path, cfg_factory):
    # classes X: s1 0, s2 6 · Y: s3 1.5, s4 2.5 · Z: s5 10, s6 21; every photo queries the five others:
    # s1 → s3 s4 s2 (rank 3) · s2 → s4 s5 s3 s1 (4) · s3 → s4 (1) · s4 → s3 (1) · s5 → s2 s4 s3 s1 s6 (5) · s6 → s5 (1)
    classes = {"s1": "X", "s2": "X", "s3": "Y", "s4": "Y", "s5": "Z", "s6": "Z"}
    rows = [(str(n + 1), {"X": "11", "Y": "12", "Z": "13"}[c], "1", f"bicycle_final/{s}_0.JPG")
            for n, (s, c) in enumerate(classes.items())]
    listing(tmp_path / "Ebay_test.txt", "image_id class_id super_class_id path", rows, counted=False)
    write_images(tmp_path, [r[3] for r in rows])
    cfg = cfg_factory("dataset=sop", f"dataset.root={tmp_path}")
    assert list(cfg.evaluator.product.ks) == [1, 10, 100, 1000]
    x = {"1": 0, "2": 6, "3": 1.5, "4": 2.5, "5": 10, "6": 21}
    catalog, [fold], result = scored(cfg, x, [1, 3, 4, 5])
    assert fold.self_match and list(fold.query_idx) == list(fold.ref_idx) == list(range(6))
    assert all(q not in ranked for q, ranked in zip(result.query_rows, result.indices))  # never itself
    m = result.metrics
    assert [m[f"product_recall_at_{k}"] for k in (1, 3, 4, 5)] == [pytest.approx(v) for v in (3 / 6, 4 / 6, 5 / 6, 1.0)]
    assert m["product_queries"] == 6 and set(catalog.items["category"]) == {"bicycle"}
    # every other photo shares the category: R = 5 (not 6: a query is not its own answer), all found
    from harness.evaluators import Ranking

    emb = np.array([[x[i], 0.0] for i in catalog.items["item_id"]], dtype=np.float32)
    ranked = evaluate(emb, catalog, [fold], Euclidean(), [Ranking()], 1).metrics
    assert ranked["category_r_precision"] == 1.0 and ranked["category_map_at_r"] == 1.0
    assert ranked["category_queries_without_relevant"] == 0


def test_consumer_to_shop(tmp_path, cfg_factory):
    pairs = [("img/CLOTHING/Blouse/id_1/comsumer_01.jpg", "img/CLOTHING/Blouse/id_1/shop_01.jpg", "id_1", "train"),
             ("img/CLOTHING/Blouse/id_1/comsumer_02.jpg", "img/CLOTHING/Blouse/id_1/shop_02.jpg", "id_1", "test"),
             ("img/CLOTHING/Skirt/id_2/comsumer_01.jpg", "img/CLOTHING/Skirt/id_2/shop_01.jpg", "id_2", "val"),
             ("img/CLOTHING/Skirt/id_2/comsumer_02.jpg", "img/CLOTHING/Skirt/id_2/shop_01.jpg", "id_2", "test"),
             ("img/TOPS/Tee/id_3/comsumer_01.jpg", "img/TOPS/Tee/id_3/shop_01.jpg", "id_3", "test"),
             ("img/TOPS/Tee/id_4/comsumer_01.jpg", "img/TOPS/Tee/id_4/shop_01.jpg", "id_4", "val")]
    listing(tmp_path / "Eval/list_eval_partition.txt", "image_pair_name_1 image_pair_name_2 item_id evaluation_status", pairs)
    write_images(tmp_path, sorted({p for pair in pairs for p in pair[:2]}))
    cfg = cfg_factory("dataset=consumer2shop", f"dataset.root={tmp_path}")
    # gallery: the shop photos of val + test, once each (id_2's appears in two pairs); queries: test consumers
    # shop id_1/02 0, id_2/01 10, id_3/01 20, id_4/01 30; consumers id_1/02 2 (rank 1), id_2/02 16 → id_3, id_2 (2),
    # id_3/01 27 → id_4, id_3 (2)
    x = {pairs[1][1]: 0, pairs[2][1]: 10, pairs[4][1]: 20, pairs[5][1]: 30, pairs[1][0]: 2, pairs[3][0]: 16, pairs[4][0]: 27}
    catalog, [fold], result = scored(cfg, x, [1, 2])
    assert ids(catalog, fold.query_idx) == sorted([pairs[1][0], pairs[3][0], pairs[4][0]])
    assert ids(catalog, fold.ref_idx) == sorted([pairs[1][1], pairs[2][1], pairs[4][1], pairs[5][1]])
    assert (result.metrics["product_recall_at_1"], result.metrics["product_recall_at_2"]) == (pytest.approx(1 / 3), 1.0)
    assert list(cfg.evaluator.product.ks) == [1, 20]


def test_oml_csv_rows_both_query_and_gallery_never_find_themselves(tmp_path, cfg_factory):
    rows = [("0", "o1.jpg", "train", "False", "False", "tops"),
            ("1", "o2.jpg", "validation", "True", "True", "tops"), ("1", "o3.jpg", "validation", "True", "True", "tops"),
            ("2", "o4.jpg", "validation", "True", "False", "shoes"), ("2", "o5.jpg", "validation", "False", "True", "shoes"),
            ("3", "o6.jpg", "validation", "False", "True", "bags"), ("1", "o7.jpg", "validation", "False", "True", "tops")]
    pd.DataFrame(rows, columns=["label", "path", "split", "is_query", "is_gallery", "category"]).to_csv(tmp_path / "df.csv", index=False)
    write_images(tmp_path, [r[1] for r in rows])
    cfg = cfg_factory("dataset=oml_csv", f"dataset.root={tmp_path}")
    # o2 0 → o6 o3 (rank 2) · o3 10 → o7 (1) · o4 4 (a query only) → o6 o2 o3 o7 o5 (5)
    x = {"o2.jpg": 0, "o3.jpg": 10, "o4.jpg": 4, "o5.jpg": 20, "o6.jpg": 3, "o7.jpg": 12}
    catalog, [fold], result = scored(cfg, x, [1, 2, 5])
    assert ids(catalog, fold.query_idx) == ["o2.jpg", "o3.jpg", "o4.jpg"] and fold.self_match
    assert ids(catalog, fold.ref_idx) == ["o2.jpg", "o3.jpg", "o5.jpg", "o6.jpg", "o7.jpg"]
    m = result.metrics
    assert [m[f"product_recall_at_{k}"] for k in (1, 2, 5)] == [pytest.approx(v) for v in (1 / 3, 2 / 3, 1.0)]


@pytest.mark.parametrize("name,files", [("inshop", ["Eval/list_eval_partition.txt"]), ("sop", ["Ebay_test.txt"]),
                                        ("consumer2shop", ["Eval/list_eval_partition.txt"]), ("oml_csv", ["df.csv"])])
def test_a_missing_or_malformed_file_is_one_line_naming_it_and_where_it_is_published(tmp_path, cfg_factory, name, files):
    cfg = cfg_factory(f"dataset={name}", f"dataset.root={tmp_path}")
    with pytest.raises(HarnessError, match="is missing; the dataset is published at https://") as err:
        instantiate(cfg.dataset).load()
    assert files[0] in str(err.value) and "\n" not in str(err.value)
    (tmp_path / files[0]).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / files[0]).write_text("3\nwrong header here\n")
    with pytest.raises(HarnessError, match="is malformed") as err:
        instantiate(cfg.dataset).load()
    assert files[0] in str(err.value) and "published at https://" in str(err.value) and "\n" not in str(err.value)


def test_counts_and_fields_of_a_listing_are_checked(tmp_path, cfg_factory):
    path = tmp_path / "Eval/list_eval_partition.txt"
    cfg = cfg_factory("dataset=inshop", f"dataset.root={tmp_path}")
    for text, message in [("5\nimage_name item_id evaluation_status\na.jpg id_1 query\n", "count line says 5 rows, it has 1"),
                          ("1\nimage_name item_id evaluation_status\na.jpg id_1\n", "row 1 has 2 fields"),
                          ("1\nimage_name item_id evaluation_status\na.jpg id_1 holdout\n", "'holdout': not train, query or gallery")]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        with pytest.raises(HarnessError, match=message):
            instantiate(cfg.dataset).load()


def test_a_benchmark_runs_end_to_end_from_its_yaml(tmp_path, cfg_factory):
    """dataset=sop through the real pipeline (random weights): the protocol and the published ks."""
    from harness.run import run

    rows = [(str(n + 1), str(11 + n // 2), "1", f"chair_final/{n}.JPG") for n in range(8)]
    listing(tmp_path / "data" / "Ebay_test.txt", "image_id class_id super_class_id path", rows, counted=False)
    write_images(tmp_path / "data", [r[3] for r in rows])
    cfg = cfg_factory("dataset=sop", f"dataset.root={tmp_path / 'data'}", "backbone.weights=random",
                      "backbone.input_size=64", "runtime=torch", "tracker=none")
    metrics = run(cfg)
    metrics = getattr(metrics, "metrics", metrics)
    assert metrics["product_queries"] == 8 and metrics["n_queries"] == 8
    assert "product_recall_at_1000" in metrics and 0 <= metrics["product_recall_at_1"] <= 1
    with pytest.raises(HarnessError, match="all-versus-all"):
        run(cfg_factory("dataset=sop", f"dataset.root={tmp_path / 'data'}", "backbone.weights=random",
                        "backbone.input_size=64", "runtime=torch", "tracker=none", "projection=pca"))
