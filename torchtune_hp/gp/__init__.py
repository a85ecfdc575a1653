"""Bayesian optimization on GPyTorch, split as BoTorch splits it: the GP encoding of a space
(:mod:`.encoding`), the surrogate (:mod:`.surrogate`), acquisitions (:mod:`.acquisition`) and
the acquisition optimizer (:mod:`.optimize`). The sampler that ties them is
:class:`torchtune_hp.samplers.gp.GPSampler`."""
