from charter.transforms.base import (
    TRANSFORMS,
    Chain,
    ConversationTransform,
    Transform,
    chain,
    families,
    get_transform,
)

__all__ = ["TRANSFORMS", "Chain", "ConversationTransform", "Transform", "chain", "families", "get_transform"]
