"""pvtime: Arm paravirtualized time (DEN0057A stolen time and Live Physical Time).

Layers, top to bottom (enforced by the import contract in pyproject.toml):
cli > calibrate > report > sim > vmm > kvm > cpu > host > guest > fixedpoint > abi.
"""

__version__ = "0.4.0"
