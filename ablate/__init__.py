"""ablate: fair, distributed ablation studies of DNA language models.

Heavy libraries (torch, ray, mlflow) are imported inside the functions that need them, so that
importing this package and running ``ablate --help`` stay fast.
"""

from ablate.errors import AblateError

__all__ = ["AblateError"]
__version__ = "0.1.0"
