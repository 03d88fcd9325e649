"""engine=local: this process embeds, DataLoader workers decode beside it."""
from __future__ import annotations

import time
from collections.abc import Iterator

from torch.utils.data import DataLoader, Dataset, Sampler

from harness.engines.base import Engine, Job, Result, decode_batch, embed_batch, load


class _Decode(Dataset):
    """Decoding processes beside the model."""

    def __init__(self, paths: list[str], preprocess, boxes: list | None):
        self.paths, self.preprocess, self.boxes = paths, preprocess, boxes

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return (i, *load(self.paths[i], self.preprocess, self.boxes[i] if self.boxes is not None else None))


class _Claiming(Sampler):
    """Yields the rows to embed block by block, claiming each block in the store first and skipping
    what another run holds: a DataLoader draws from it as it goes, so claims stay close to the work."""

    def __init__(self, order: list[int], claim, block: int):
        self.order, self.claim, self.block = order, claim, block

    def __iter__(self):
        for start in range(0, len(self.order), self.block):
            part = self.order[start:start + self.block]
            mine = self.claim(part)
            yield from (i for i in part if i in mine)

    def __len__(self):
        return len(self.order)


class LocalEngine(Engine):
    """This process: DataLoader workers decode, the backbone embeds in batches."""

    def __init__(self, config: dict | None = None, num_workers: int = 2):
        super().__init__(config)
        self.num_workers = num_workers

    def batches(self, job: Job) -> Iterator[list[Result]]:
        loader = DataLoader(_Decode(job.paths, job.preprocess, job.boxes), batch_size=job.batch_size,
                            num_workers=self.num_workers, collate_fn=decode_batch,
                            sampler=_Claiming(job.pending, job.claim, job.claim_block))
        for batch in loader:
            t0 = time.perf_counter()
            results = embed_batch(job.backbone, batch)
            embedded = time.perf_counter() - t0
            self.driver_embed_seconds += embedded
            self.count({**batch.seconds, "embed": embedded})
            yield results
