"""The host-independent core every method builds on.

* :mod:`.pruner` — :class:`ViTPruner`, a ``tp.pruner.BasePruner`` with exact head counts;
* :mod:`.head_importance` — the protocol of the data-driven head criteria;
* :mod:`.calibration` — the one calibration path (attention maps, gradient passes);
* :mod:`.training` — the one training loop (``finetune``) and ``evaluate``;
* :mod:`.metrics`, :mod:`.io`, :mod:`.criteria`, :mod:`.search`, :mod:`.snapshot`,
  :mod:`.distributed`, :mod:`.tp_seams` — measurement, safe save/load, tp criteria by name,
  rounding and bisection, rollback, torchrun helpers, and the guarded tp internals.

What reads timm's internals is in :mod:`tp_vit_plugins.hosts.timm`.
"""
