"""lipcert: certified adversarial robustness with Lipschitz networks.

l-inf-dist nets certified by a single forward pass (Zhang et al. 2021/2022) and l2 Lipschitz-bound
training of ReLU / MaxMin CNNs (Huang et al. 2021; Fazlyab et al. 2023), in one library.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
