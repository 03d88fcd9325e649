from harness.serving.searcher import Searcher

__all__ = ["Searcher"]
