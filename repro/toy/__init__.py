"""The offline toy world: procedural objects at many scales, and a ResNet-18-shaped network trained on it.

``repro.toy.data`` draws the images (deterministic per seed, split and index), ``repro.toy.train`` trains
the network, ``repro.toy.commands`` exposes both as ``repro toy data`` and ``repro toy train``.
"""
