"""Dataset and model analysis: r-separation (Zhang22 Def. 3.1), nearest-neighbour l-inf-dist nets
(Zhang22 Thm 3.2 / A.2), empirical Lipschitz estimates by PGD (Zhang22 App. C)."""

from .lipschitz import empirical_lipschitz
from .separation import Separation, min_interclass_distance, nearest_neighbour_net, r_separation

__all__ = ["Separation", "empirical_lipschitz", "min_interclass_distance", "nearest_neighbour_net", "r_separation"]
