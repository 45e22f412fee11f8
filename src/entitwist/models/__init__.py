"""entitwist.models: the Enti-TwistNet network and its parts.

- :mod:`.visual` Swin stages (timm), :mod:`.text` text encoders and tokenizer (transformers)
- :mod:`.seg` SEG (eq. 1-4), :mod:`.cube` tri-modal cube (eq. 5-6), :mod:`.dat` DAT
  (eq. 7-10), :mod:`.fusion` one fusion stage, :mod:`.mamba` the Mamba block
- :mod:`.decoder` eq. 11-14, :mod:`.loss` the training loss
- :mod:`.enti_twistnet` the whole network (``EntiTwistNet``)
"""
