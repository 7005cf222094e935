"""Training a population of MLPs at once: the loop and the trainer choice (:mod:`.loop`), how an
epoch runs on each path (:mod:`.runs`), the members' data and its order (:mod:`.data_order`), the
flat SGD / Adam (:mod:`.optim`), the hand-written backward over a flat buffer (:mod:`.hand`) and
the fused C++ kernel (:mod:`.fused`, ``csrc/``)."""
