import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.config import instantiate
from harness.data import stratified_order
from harness.errors import HarnessError


def test_stratified_order_prefixes_are_proportional_and_seeded():
    labels = pd.Series(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    first = labels.iloc[stratified_order(labels, 0)[:20]].value_counts().to_dict()
    assert first == {"a": 12, "b": 6, "c": 2}
    assert (stratified_order(labels, 1) == stratified_order(labels, 1)).all()
    assert not (stratified_order(labels, 1) == stratified_order(labels, 2)).all()


def test_manifest_and_folder_tree_and_limit(cfg_factory, catalog_dir, tmp_path):
    cat = instantiate(cfg_factory("dataset=products", f"dataset.root={catalog_dir}",
                                  "dataset.levels=[category,subcategory,colour]").dataset).load()
    assert len(cat) == 54 and cat.levels == ["category", "subcategory", "colour"]
    limited = instantiate(cfg_factory("dataset=products", f"dataset.root={catalog_dir}", "dataset.limit=18").dataset).load()
    assert len(limited) == 18 and limited.items["subcategory"].value_counts().eq(2).all()
    tree = tmp_path / "tree"
    for rel in ["Shoes/Sneakers/a.jpg", "Shoes/Boots/b.png", "Bags/Totes/c.jpg"]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"x")
    items = instantiate(cfg_factory("dataset=products", f"dataset.root={tree}").dataset).load().items
    assert sorted(zip(items.category, items.subcategory)) == [("Bags", "Totes"), ("Shoes", "Boots"), ("Shoes", "Sneakers")]


@pytest.mark.parametrize("override,message", [
    ("dataset.root=/nonexistent/catalog", "does not exist"),
    ("dataset.levels=[category,style]", "Unknown label column"),
])
def test_dataset_errors_are_clear(cfg_factory, catalog_dir, override, message):
    cfg = cfg_factory("dataset=products", f"dataset.root={catalog_dir}", override)
    with pytest.raises(HarnessError, match=message):
        instantiate(cfg.dataset).load()


def test_protocols_never_put_a_query_in_its_own_references(cfg_factory, catalog_dir, tmp_path):
    base = ["dataset=products", f"dataset.root={catalog_dir}"]
    cfg = cfg_factory(*base)
    catalog = instantiate(cfg.dataset).load()
    _, [fold] = instantiate(cfg.protocol).split(catalog)
    assert len(fold.query_idx) == 5 and not set(fold.query_idx) & set(fold.ref_idx)
    _, folds = instantiate(cfg_factory(*base, "protocol=kfold", "protocol.folds=3").protocol).split(catalog)
    assert sorted(np.concatenate([f.query_idx for f in folds])) == list(range(54))
    assert all(len(f.query_idx) == 18 and len(f.ref_idx) == 36 for f in folds)
    queries = catalog.items.iloc[:3].assign(path=lambda d: d["path"].str.replace(str(catalog_dir) + "/", ""))
    qdir = tmp_path / "queries"
    qdir.mkdir()
    queries.to_csv(qdir / "manifest.csv", index=False)
    for p in catalog.items["path"].iloc[:3]:
        (qdir / "images").mkdir(exist_ok=True)
        (qdir / "images" / p.split("/")[-1]).write_bytes(open(p, "rb").read())
    extended, [fold] = instantiate(cfg_factory(*base, "protocol=queries", f"protocol.root={qdir}").protocol).split(catalog)
    assert len(extended) == 57 and fold.query_idx.tolist() == [54, 55, 56] and len(fold.ref_idx) == 54


def _idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_debian_idx_files(cfg_factory, tmp_path):
    raw = tmp_path / "fmnist"
    raw.mkdir()
    rng = np.random.default_rng(0)
    pixels = {}
    for prefix, n in [("train", 40), ("t10k", 20)]:
        pixels[prefix] = rng.integers(0, 255, (n, 28, 28))
        _idx(raw / f"{prefix}-images-idx3-ubyte.gz", pixels[prefix])
        _idx(raw / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    cfg_args = (f"dataset.search_dirs=[{raw}]", "dataset.catalog_size=20", "dataset.query_size=10")
    cfg = cfg_factory(*cfg_args)
    catalog, [fold] = instantiate(cfg.protocol).split(instantiate(cfg.dataset).load())
    items = catalog.items
    assert len(fold.ref_idx) == 20 and len(fold.query_idx) == 10
    assert set(items.category) == {"Topwear", "Bottomwear", "Dress", "Footwear", "Bags"}
    assert items.loc[items.subcategory == "Ankle boot", "category"].eq("Footwear").all()
    # written as photos (negated back); photo=false keeps Fashion-MNIST's own negatives
    first = items[items.split == "catalog"].iloc[0]
    source = pixels["train"][int(first.item_id.split("-")[1])]
    np.testing.assert_array_equal(np.asarray(Image.open(first.path)), 255 - source)
    raw_items = instantiate(cfg_factory(*cfg_args, "dataset.photo=false").dataset).load().items
    raw_first = raw_items[raw_items.item_id == first.item_id].iloc[0]
    np.testing.assert_array_equal(np.asarray(Image.open(raw_first.path)), source)


def test_catalog_contract_is_checked_when_a_dataset_loads(cfg_factory, tmp_path):
    root = tmp_path / "shop"
    root.mkdir()

    def load(manifest: str, *overrides):
        (root / "manifest.csv").write_text(manifest)
        return instantiate(cfg_factory("dataset=products", f"dataset.root={root}", *overrides).dataset).load()

    with pytest.raises(HarnessError, match=r"manifest.csv has no 'path' column; columns: file, category"):
        load("file,category,subcategory\na.jpg,x,y\n")
    with pytest.raises(HarnessError, match=r"manifest.csv: column 'item_id' must be unique .* e.g. '7'"):
        load("path,category,subcategory,item_id\na.jpg,x,y,7\nb.jpg,x,y,7\n")
    with pytest.raises(HarnessError, match=r"manifest.csv: column 'path' is empty in 1 row"):
        load("path,category,subcategory\na.jpg,x,y\n,x,y\n")
    with pytest.raises(HarnessError, match="dataset.limit must be a whole number >= 1, or null; got 0"):
        load("path,category,subcategory\na.jpg,x,y\n", "dataset.limit=0")
    ids = load("path,category,subcategory\nimages/a.jpg,x,y\nimages/b.jpg,x,y\n").items["item_id"]
    assert ids.tolist() == ["images/a.jpg", "images/b.jpg"]  # no item_id column: the relative path


def test_folder_tree_files_sharing_a_stem_get_distinct_ids(cfg_factory, tmp_path):
    tree = tmp_path / "tree"
    for rel in ["Shoes/Sneakers/1.jpg", "Shoes/Boots/1.jpg", "Bags/Totes/1.jpg"]:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tree / rel)
    items = instantiate(cfg_factory("dataset=products", f"dataset.root={tree}").dataset).load().items
    assert sorted(items["item_id"]) == ["Bags/Totes/1.jpg", "Shoes/Boots/1.jpg", "Shoes/Sneakers/1.jpg"]


def test_dataset_digests_follow_the_manifest_and_the_image_contents(tmp_path):
    from harness.data.catalog import Catalog
    from harness.data.lineage import dataset_records
    from harness.protocols import Fold

    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,category\na.jpg,x\nb.jpg,y\nc.jpg,x\n")
    items = pd.DataFrame({"path": ["/a", "/b", "/c"], "item_id": ["a", "b", "c"], "category": ["x", "y", "x"],
                          "content_hash": ["h1", "h2", "h3"]})
    folds = [Fold(np.array([0]), np.array([1, 2]))]

    def digests(table):
        records = dataset_records(Catalog(table, ["category"], str(manifest), str(tmp_path)), folds, "Holdout", "FolderOrManifest")
        assert [r.context for r in records] == ["catalog", "queries"] and records[1].table["item_id"].tolist() == ["a"]
        return [r.digest for r in records]

    before = digests(items)
    assert digests(items.copy()) == before                                  # the same images: the same digests
    assert digests(items.assign(content_hash=["h1", "h2", "h9"]))[0] != before[0]   # an image changed
    assert digests(items.assign(content_hash=["h1", "h2", "h9"]))[1] == before[1]   # (not a query's)
    manifest.write_text("path,category\na.jpg,x\nb.jpg,y\nc.jpg,y\n")        # a label file edited
    assert digests(items)[0] != before[0]


def test_a_query_set_s_labels_are_mapped_to_the_catalog_s_vocabulary(cfg_factory, catalog_dir, tmp_path):
    """protocol.labels: a consumer set that says 'round' for the shop's 'circle' is scored in the shop's words."""
    base = ["dataset=products", f"dataset.root={catalog_dir}", "protocol=queries"]
    catalog = instantiate(cfg_factory(*base, "protocol.root=x").dataset).load()
    qdir = tmp_path / "queries"
    (qdir / "images").mkdir(parents=True)
    rows = catalog.items.iloc[[0, 7]]
    for p in rows["path"]:
        (qdir / "images" / p.split("/")[-1]).write_bytes(open(p, "rb").read())
    pd.DataFrame({"path": ["images/" + p.split("/")[-1] for p in rows["path"]],
                  "category": ["round", "round"], "subcategory": ["round-red", "circle-red"]}).to_csv(qdir / "manifest.csv", index=False)
    mapping = tmp_path / "labels.csv"
    mapping.write_text("level,query_label,catalog_label\ncategory,round,circle\nsubcategory,round-red,circle-red\n")
    extended, [fold] = instantiate(cfg_factory(*base, f"protocol.root={qdir}", f"protocol.labels={mapping}").protocol).split(catalog)
    queries = extended.items.iloc[fold.query_idx]
    assert queries["category"].tolist() == ["circle", "circle"]
    assert queries["subcategory"].tolist() == ["circle-red", "circle-red"]   # mapped, and kept where unnamed
    assert extended.items.iloc[fold.ref_idx]["category"].equals(catalog.items["category"])  # the catalog untouched
    for text, message in [("level,label,to\n", "must have the columns level, query_label, catalog_label"),
                          ("level,query_label,catalog_label\ncolour,red,rot\n", "maps level 'colour', not one of"),
                          ("level,query_label,catalog_label\ncategory,round,circle\ncategory,round,square\n",
                           "maps category 'round' more than once")]:
        mapping.write_text(text)
        with pytest.raises(HarnessError, match=message):
            instantiate(cfg_factory(*base, f"protocol.root={qdir}", f"protocol.labels={mapping}").protocol).split(catalog)
