"""Pure ``@triton.jit`` kernels of fastalign, installed as ``fastalign.kernels``.

Nothing here imports from ``fastalign``: launchers, autograd and dispatch live in
``fastalign.ops``. One concern per file:

- ``logits_tile``: recompute one ``[BLOCK_N, BLOCK_V]`` tile of the (soft-capped, tempered)
  logits from hidden rows and the LM-head weight; shared by forward and backward.
- ``linear_logprob_fwd``: online log-sum-exp / target logit / entropy terms over vocab tiles,
  split over V when N is small, and the exact combine of the splits.
- ``linear_logprob_bwd``: one recompute of each logits tile feeding dH, dW and db.
"""

if __name__ == "kernels":
    # Imported as a top-level ``kernels``: the repository root is on sys.path (Python started in a
    # clone: ``python -m pytest``, ``python -m fastalign``, a notebook) and this folder shadows
    # Hugging Face's ``kernels`` distribution, which transformers (>= 5.25) imports. The import is
    # handed to that distribution: the module left in sys.modules is the one an import returns.
    import os as _os
    import sys as _sys
    from importlib import machinery as _machinery
    from importlib import util as _util

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _elsewhere = [entry for entry in _sys.path if _os.path.abspath(entry or _os.curdir) != _root]
    _spec = _machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is not None and _spec.loader is not None:
        _module = _util.module_from_spec(_spec)
        _sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
