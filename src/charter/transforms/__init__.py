from charter.transforms.base import TRANSFORMS, Chain, Transform, chain, families, get_transform

__all__ = ["TRANSFORMS", "Chain", "Transform", "chain", "families", "get_transform"]
