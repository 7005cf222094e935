"""Training a population of MLPs at once: the loop (:mod:`.loop`), the torch paths with a hand
backward (:mod:`.hand`) and the fused C++ kernel (:mod:`.fused`, ``csrc/``)."""
