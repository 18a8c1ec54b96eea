"""A backbone for precomputed feature sequences of any K modalities (MOSI / MOSEI / CH-SIMS: text, audio and vision
frames), REP's vision-language-audio setting.

- :mod:`.configuration`: :class:`SequenceConfig` (modality name -> frame width, frame limits, layer sizes);
- :mod:`.modeling`: :class:`SequenceModel` (MulT-style temporal convolution projections, modality-type and position
  embeddings, one joint stream of BERT layers, per-modality mean pooling);
- :mod:`.interface`: :class:`SequenceBackbone`, the backbone interface methods use;
- :mod:`.pretraining`: stage 1 (:func:`pretrain_sequence_backbone`), training on complete data with random modality
  dropping before a method is tuned on the frozen result.
"""

from transformers import AutoConfig, AutoModel

from .configuration import MODEL_TYPE, SequenceConfig
from .interface import SequenceBackbone
from .modeling import SequenceModel
from .pretraining import SequencePretrainSettings, pretrain_sequence_backbone, train_sequence_backbone

AutoConfig.register(MODEL_TYPE, SequenceConfig)
AutoModel.register(SequenceConfig, SequenceModel)

__all__ = [
    "MODEL_TYPE",
    "SequenceBackbone",
    "SequenceConfig",
    "SequenceModel",
    "SequencePretrainSettings",
    "pretrain_sequence_backbone",
    "train_sequence_backbone",
]
