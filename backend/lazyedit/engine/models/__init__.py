from .context_encoder import ContextEncoder
from .layers import set_attention_backend
from .text_encoder import ByteTextEncoder, HFTextEncoder
from .transformer import LazyDiffusionTransformer
from .tuners import CSCTuner, SCTuner, SCTuners

__all__ = [
    "ByteTextEncoder",
    "CSCTuner",
    "ContextEncoder",
    "HFTextEncoder",
    "LazyDiffusionTransformer",
    "SCTuner",
    "SCTuners",
    "set_attention_backend",
]
