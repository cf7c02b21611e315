"""Interoperability with other implementations' files; no network code lives here.

- :mod:`.official` loads official ``score_sde_pytorch`` checkpoints safely and maps their
  weights onto our networks; :mod:`.official_config` reads the official configs;
- :mod:`.convert` turns an official checkpoint into a scoresde run folder
  (``checkpoint.safetensors`` + ``config.json``): the one conversion path (``scoresde convert``);
- :mod:`.diffusers` loads NCSN++ weights from a score-SDE diffusers ``UNet2DModel`` folder
  (its config is checked in :mod:`.diffusers_config`).
"""
