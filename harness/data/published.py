"""Public retrieval benchmarks read from their own file layouts, each with its official protocol.

A benchmark is one small subclass (`files` it reads under `dataset.root`, where it is published, and
`_table()`: its listing as the catalog contract's columns) and one `conf/dataset/<name>.yaml`. Its
`split` column says which images are queries (`query`), which the gallery (`catalog`), and which are
both (`both`: all-versus-all, each query searching every other image, never itself); `product_id` is
what relevance means (the same product, or class); the levels are its coarser labels. The harness
never downloads a benchmark: licences differ, and a missing or malformed file stops with one line
naming it and where the dataset is published.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.data.catalog import Catalog, check_limit
from harness.errors import HarnessError


class Published:
    name = ""           # the dataset's conf/dataset/<name>.yaml
    published_at = ""   # where to get it
    files: dict[str, str] = {}  # role → path under root (the YAML may rename them)

    def __init__(self, root: str | None = None, levels=("category",), files: dict | None = None,
                 recall_at=(1, 5, 10), limit: int | None = None, seed: int = 0):
        """`recall_at`: the ks the set is published with (the `product` evaluator reads them from the config)."""
        self.root, self.levels, self.recall_at = root, list(levels), list(recall_at)
        self.files = {**type(self).files, **(files or {})}
        self.limit, self.seed = check_limit(limit), seed

    def path(self, role: str) -> Path:
        """The file `role` names, which must exist."""
        if self.root is None:
            raise HarnessError(f"dataset={self.name} needs dataset.root=DIR (the folder holding "
                               f"{', '.join(self.files.values())}); it is published at {self.published_at}.")
        path = Path(self.root).expanduser().resolve() / self.files[role]
        if not path.is_file():
            raise HarnessError(f"dataset={self.name}: {path} is missing; the dataset is published at "
                               f"{self.published_at} (the harness never downloads it: its licence is its own).")
        return path

    def exists(self, role: str) -> bool:
        """Whether an optional file (boxes) is there."""
        return self.root is not None and (Path(self.root).expanduser() / self.files[role]).is_file()

    def malformed(self, path: Path, what: str) -> HarnessError:
        return HarnessError(f"dataset={self.name}: {path} is malformed ({what}); expected the layout published "
                            f"at {self.published_at}.")

    def listing(self, role: str, columns: list[str], counted: bool) -> pd.DataFrame:
        """A whitespace-separated listing: [a count line,] a header naming `columns` (in order), rows."""
        path = self.path(role)
        try:
            lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise self.malformed(path, "not a text file") from None
        if counted:
            if not lines or len(lines[0]) != 1 or not lines[0][0].isdigit():
                raise self.malformed(path, "its first line is not the count of its rows")
            count, lines = int(lines[0][0]), lines[1:]
        if not lines or lines[0][:len(columns)] != columns:
            raise self.malformed(path, f"its header is not {' '.join(columns)}")
        header, rows = lines[0], lines[1:]
        bad = next((n for n, row in enumerate(rows) if len(row) != len(header)), None)
        if bad is not None:
            raise self.malformed(path, f"row {bad + 1} has {len(rows[bad])} fields for a header of {len(header)}")
        if counted and count != len(rows):
            raise self.malformed(path, f"its count line says {count} rows, it has {len(rows)}")
        return pd.DataFrame(rows, columns=header)

    def load(self) -> Catalog:
        table = self._table()
        root = Path(self.root).expanduser().resolve()
        table["path"] = [str(root / p) for p in table["path"]]
        catalog = Catalog.from_table(table, self.levels, f"dataset={self.name} ({root})", root)
        return catalog.limit(self.limit, self.seed)

    def _table(self) -> pd.DataFrame:
        """Columns path (relative to root), item_id, product_id, split, the levels, [boxes]."""
        raise NotImplementedError


def path_parts(paths: pd.Series, depth: int) -> pd.Series:
    """The `depth`-th folder of each relative path ('img/WOMEN/Dresses/id_1/x.jpg', 1 → 'WOMEN')."""
    return paths.str.split("/").str[depth].fillna("")
