"""Weight-space symmetries of the zoo's MLPs: permutations, canonical forms and alignment.

Two runs of the same MLP end with weights that look unrelated largely because the function
does not see the order of hidden units. With ``a`` the activation, hidden unit ``i`` of layer
``l`` computes ``a(W_l[i] . h + b_l[i])`` and feeds ``W_{l+1}[:, i]``; the network is unchanged
when

- the units of a hidden layer are **permuted** (rows of ``W_l``, ``b_l`` and columns of
  ``W_{l+1}`` with one permutation), for every activation;
- a unit is multiplied by a **factor** ``f`` (incoming weights and bias times ``f``, outgoing
  weights divided by ``f``) whenever ``a(f z) = f a(z)``: ``f = -1`` for odd activations
  (tanh, identity), any ``f > 0`` for positively homogeneous ones (relu, leaky_relu,
  identity);
- under weight normalization (``w = g v / ||v||``) a row of ``v`` is rescaled, or ``g`` and
  that row of ``v`` are both negated.

Everything here works on **stacked** parameters: dicts of tensors keyed by ``state_dict``
names with a leading member axis ``M`` (:mod:`weightspace.nets.spec`). Parameters may be the
effective ones (``weight``, ``bias``), the trainable ones of a weight-normalized population
(``weight_g``, ``weight_v``, ``bias``), or both; a transform is applied consistently to
whatever names are present, while its decisions (sort keys, matching similarities) are taken
on the effective weights. The activation is ``spec.activation``: one population shares one.

Modules:

- :mod:`.permutations`: permutation specs (which axes each ``P_l`` acts on) and the algebra of
  permutations (apply, invert, compose, identity, random);
- :mod:`.transforms`: per-unit factors and :class:`UnitTransform` (apply, undo, compose,
  random transforms, augmentation);
- :mod:`.canonical`: canonical forms (sort units, fix signs, fix scales, weight norm);
- :mod:`.matching`: weight matching (Git Re-Basin), alignment to a reference, activation
  matching; :mod:`.merge`: MergeMany (sequential or batched);
- :mod:`.derive`: derived zoos, a whole zoo rewritten in one of these frames (not imported
  here: ``from weightspace.symmetry.derive import derive``).

The public API is re-exported here: ``from weightspace import symmetry as S; S.canonicalize(...)``.
Flat vectors and the weight distance live in :mod:`weightspace.nets.layout`.
"""

from weightspace.symmetry.canonical import (
    SIGN_KEYS,
    SORT_KEYS,
    canonical_scale,
    canonical_signs,
    canonical_unit_frame,
    canonical_weight_norm,
    canonicalize,
    sort_units,
)
from weightspace.symmetry.matching import (
    Matching,
    activation_matching,
    align_to_reference,
    hidden_activations,
    weight_matching,
)
from weightspace.symmetry.merge import merge_many
from weightspace.symmetry.permutations import (
    PermutationSpec,
    apply_permutation,
    compose,
    identity_permutations,
    invert_permutation,
    mlp_permutation_spec,
    perm_name,
    random_permutations,
)
from weightspace.symmetry.transforms import (
    HOMOGENEOUS_ACTIVATIONS,
    ODD_ACTIVATIONS,
    UnitTransform,
    apply_transform,
    augment,
    compose_transforms,
    random_transform,
    rescale_units,
    undo_transform,
)

__all__ = [
    "HOMOGENEOUS_ACTIVATIONS",
    "ODD_ACTIVATIONS",
    "SIGN_KEYS",
    "SORT_KEYS",
    "Matching",
    "PermutationSpec",
    "UnitTransform",
    "activation_matching",
    "align_to_reference",
    "apply_permutation",
    "apply_transform",
    "augment",
    "canonical_scale",
    "canonical_signs",
    "canonical_unit_frame",
    "canonical_weight_norm",
    "canonicalize",
    "compose",
    "compose_transforms",
    "hidden_activations",
    "identity_permutations",
    "invert_permutation",
    "merge_many",
    "mlp_permutation_spec",
    "perm_name",
    "random_permutations",
    "random_transform",
    "rescale_units",
    "sort_units",
    "undo_transform",
    "weight_matching",
]
