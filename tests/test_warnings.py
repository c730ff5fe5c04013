"""No deprecated API of our making on the default paths: `train`, `export`, `score`, the
single-process examples and the library modules, with DeprecationWarning / FutureWarning
raised from our own code treated as errors.

A warning is "ours" when the frame it points at (``warnings.warn``'s stacklevel names the
caller) lies in this package or the examples. Warnings that torch, torchrec or fbgemm raise
about their own internals point into those packages and are left alone; the ones seen on
these paths, and why we cannot avoid them:

* torchrec's DistributedModelParallel: ``broadcast_buffers is deprecated`` (torchrec passes
  it to DDP itself; sharded paths only, not run here);
* torch.ao.quantization deprecation inside torchrec's ``quantize_inference_model`` (the
  legacy ``--int8`` TorchScript path only, not a default);
* torch's pytree ``LeafSpec`` FutureWarning while AOTInductor packages a program (inside
  torch/_inductor).
"""

import os
import runpy
import sys
import warnings

import pytest

from torchrec_din.cli import main
from torchrec_din.testing.deprecations import deprecations_of_ours

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ours = deprecations_of_ours


def test_default_paths_raise_no_deprecation_warning_of_ours(tmp_path) -> None:
    sets = ["data.synthetic.num_users=120", "data.synthetic.num_items=80",
            "data.synthetic.samples_per_user=5", "data.synthetic.max_length=12",
            "train.epochs=1", "train.progress=false", "model.attention_activation=dice",
            f"data.cache_dir={tmp_path / 'cache'}"]
    run = tmp_path / "run"
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"id": 1, "user": {"user": 3}, "history": {"item": [1, 2], '
                        '"cate": [1, 1]}, "candidates": {"item": [4, 5], "cate": [1, 2]}}\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--config", "configs/synthetic_din.yaml", "--output-dir",
                     str(run), *[a for s in sets for a in ("--set", s)]]) == 0
        # export and score --model (the AOTI package) are checked the same way in
        # tests/serve/test_scorer.py::test_aoti_package_serves_the_eager_scores.
        assert main(["score", "--checkpoint", str(run), "--input", str(requests), "--output",
                     str(tmp_path / "scores.jsonl")]) == 0
        argv = sys.argv
        try:
            sys.argv = ["din_interaction.py"]
            runpy.run_path(os.path.join(ROOT, "examples", "din_interaction.py"),
                           run_name="__main__")
        finally:
            sys.argv = argv
    assert _ours(caught) == []


def test_the_check_sees_our_warnings() -> None:
    """The filter is not vacuous: a deprecation warned from our code is caught as ours."""
    import torch

    from torchrec_din.serve.export import script_scorer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn_explicit("x is deprecated", DeprecationWarning,
                               os.path.join(ROOT, "torchrec_din", "cli.py"), 1)
    assert len(_ours(caught)) == 1
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 14):
        # torch 2.14 deprecates torch.jit.script: the legacy export path is ours to warn on.
        from torchrec_din.build import build_model
        from torchrec_din.config import load_config

        model = build_model({"item": 9, "cate": 3, "user": 4, "age": 2, "gender": 2,
                             "occupation": 2}, load_config(None, ["model.embedding_dim=4"]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            script_scorer(model.eval())
        assert any("`torch.jit.script` is deprecated" in m for m in _ours(caught)), \
            [str(w.message)[:80] for w in caught]
    else:
        pytest.skip("torch < 2.14 does not deprecate torch.jit.script")
