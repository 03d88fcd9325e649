from harness.metrics.distances import (Chebyshev, Correlation, Cosine, Distance, Euclidean, Manhattan,
                                       Minkowski)

__all__ = ["Distance", "Euclidean", "Manhattan", "Minkowski", "Chebyshev", "Correlation", "Cosine"]
