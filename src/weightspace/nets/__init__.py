"""The core every stage shares: the network spec and parameter names (:mod:`.spec`), the reference
batched forward (:mod:`.forward`), flat and token layouts (:mod:`.layout`), the loss and accuracy
of stacked networks (:mod:`.metrics`)."""
