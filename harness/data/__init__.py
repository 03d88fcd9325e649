from harness.data.catalog import Catalog, FolderOrManifest, stratified_order
from harness.data.fashion_mnist import FashionMNIST

__all__ = ["Catalog", "FolderOrManifest", "FashionMNIST", "stratified_order"]
