"""Pure ``@triton.jit`` kernels of fastalign, installed as ``fastalign.kernels``.

Nothing here imports from ``fastalign``: launchers, autograd and dispatch live in
``fastalign.ops``. One concern per file:

- ``logits_tile``: recompute one ``[BLOCK_N, BLOCK_V]`` tile of the (soft-capped, tempered)
  logits from hidden rows and the LM-head weight; shared by forward and backward.
- ``linear_logprob_fwd``: online log-sum-exp / target logit / entropy terms over vocab tiles,
  split over V when N is small, and the exact combine of the splits.
- ``linear_logprob_bwd``: one recompute of each logits tile feeding dH, dW and db.
"""
