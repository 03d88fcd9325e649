"""20 concurrent clients x 10 queries against the demo page's API (gradio_client), on loopback.

    .venv/bin/python experiments/load_demo.py [--clients 20] [--queries 10]

Serves the products catalog through the same launch() as demo.py; reports errors and latency (answers
carry result image URLs; the clients do not fetch them).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

from harness import ROOT
from bench import DEFAULT_CATALOG, products_searcher


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--queries", type=int, default=10)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("demo", ROOT / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    searcher, items = products_searcher(DEFAULT_CATALOG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blocks = demo.launch(searcher, {"model_uri": "products (benchmark)"}, "127.0.0.1", port,
                         prevent_thread_lock=True, quiet=True)
    paths = items["path"].sample(args.clients * args.queries, random_state=0).tolist()

    def session(c):
        client, out = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False), []
        for q in range(args.queries):
            t0 = time.perf_counter()
            try:
                gallery, *_ = client.predict(handle_file(paths[c * args.queries + q]), "", 5, False, "", 0.0,
                                             api_name="/search")
                out.append((time.perf_counter() - t0, len(gallery) == 5))
            except Exception as exc:  # count, don't stop: the point is to see errors
                out.append((time.perf_counter() - t0, False))
                print("error:", exc)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = [r for rs in pool.map(session, range(args.clients)) for r in rs]
    wall = time.perf_counter() - t0
    blocks.close()
    lat = np.array([r[0] for r in results]) * 1000
    row = {"clients": args.clients, "queries_each": args.queries, "requests": len(results),
           "errors": int(sum(not ok for _, ok in results)), "wall_s": round(wall, 1),
           "throughput_qps": round(len(results) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50))),
           "p95_ms": round(float(np.percentile(lat, 95)))}
    print(row)
    out = ROOT / "experiments" / "bench" / "load_demo.json"
    out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
