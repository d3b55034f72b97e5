"""The model compiles as one graph in every ablation layout that ``lamamba experiment`` trains (the scan and
routing are opaque custom ops), and ``compile_model`` (a plain ``torch.compile`` for the window tables) keeps the
construction of index tensors out of it;
regional compilation traces one graph per distinct block, not per block, and keeps the model's interface."""
import copy
import os
import subprocess
import sys

import pytest
import torch

import lamamba
from lamamba.models import compile_model
from lamamba.models import compile as compile_module
from lamamba.models.compile import (compile_for_sampling, inductor_cache_dir, release_compiled, resolve_compile_scope,
                                    resolve_cuda_graphs)
from lamamba.ops import scan_paths, window_layout

VARIANTS = [dict(), dict(attention="none"), dict(attention="global"), dict(shift=False), dict(skip="concat"),
            dict(layout="isotropic", patch_size=2, isotropic_depth=2)]
# host-side index construction (scan paths, relative index, window masks) that must not be in a compiled graph
INDEX_OPS = ("flip", "argsort", "meshgrid", "zeros", "eq")
WINDOW_TABLE_OPS = ("meshgrid", "zeros", "eq")  # the window tables' part of them


def tiny(**overrides):
    return lamamba.create_model("LaMamba-Diff-S", image_size=16, latent_downsample=1, in_channels=1,
                                num_classes=10, embed_dim=8, cond_dim=16, num_heads=2, window_size=4, **overrides)


def inputs():
    return torch.randn(2, 1, 16, 16), torch.randint(0, 1000, (2,)), torch.randint(0, 10, (2,))


def test_forward_has_no_graph_breaks():
    import torch._dynamo as dynamo

    explanation = dynamo.explain(tiny().eval())(*inputs())
    assert explanation.graph_break_count == 0, explanation.break_reasons
    dynamo.reset()


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "base")
def test_compile_model_one_graph_without_index_construction(overrides):
    targets: list[str] = []
    capture = _target_backend(targets)
    torch._dynamo.reset()
    scan_paths._device_cache.clear()   # start cold: compile_model's warm-up must fill the caches
    window_layout._cache.clear()
    model = tiny(**overrides).train()
    net = compile_model(model, scope="full", backend=capture, fullgraph=True)  # a graph break raises
    assert model.training                                          # the warm-up forward restored the mode
    x, t, y = inputs()
    out = net(x, t, y)
    assert out.shape == (2, 2, 16, 16)
    found = _calls_of(targets, INDEX_OPS)
    assert not found, found
    torch._dynamo.reset()


def _target_backend(targets: list[str]):
    """A compile backend that records the target of every function call in the graphs it is given."""
    def capture(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm
    return capture


def _calls_of(targets: list[str], ops: tuple[str, ...]) -> list[str]:
    """The recorded call targets that are one of ``ops`` (``torch.flip``, ``<built-in method eq ...>``, ...)."""
    return [t for t in targets if any(f"{op} " in t or t.endswith(f".{op}") or f"function {op}" in t for op in ops)]


def _counting_backend(graphs: list):
    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm
    return capture


def test_regional_compile_shares_graphs_between_blocks_and_keeps_the_interface():
    torch._dynamo.reset()
    graphs: list = []
    model = tiny().train()
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    assert compile_model(model, backend=_counting_backend(graphs)) is model   # blocks compiled in place
    assert list(model.state_dict()) == keys
    x, t, y = inputs()
    torch.manual_seed(1)
    out = model(x, t, y)
    torch.manual_seed(1)
    assert torch.allclose(out, reference(x, t, y), atol=1e-5)
    blocks = model.blocks()
    distinct = len(graphs)
    assert 1 < distinct < len(blocks)             # 16 blocks, one graph per distinct (width, shift, projection)
    model(x, t, y)
    assert len(graphs) == distinct                # the second step reuses every graph
    # the EMA's deep copy calls its own blocks, compiled, with the graphs of the same signatures
    ema = copy.deepcopy(model).eval()
    assert all(b.forward.__self__ is b for b in ema.blocks())
    with torch.no_grad():
        guided = ema.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 10)]),
                                      cfg_scale=2.0)
    assert guided.shape == (4, 2, 16, 16) and len(graphs) > distinct   # eval/no-grad: graphs of its own
    torch._dynamo.reset()


def test_release_compiled_forgets_the_graphs_and_the_model_still_runs():
    """``release_compiled`` (lamamba experiment, between training and sampling in one process) drops every graph;
    a regionally compiled model then compiles its blocks again and computes the same."""
    torch._dynamo.reset()
    graphs: list = []
    model = tiny().eval()
    compile_for_sampling(model, backend=_counting_backend(graphs))  # without CUDA graphs: regional, in place
    x, t, y = inputs()
    with torch.no_grad():
        before = model(x, t, y)
        first = len(graphs)
        release_compiled()
        assert not compile_module._COMPILED
        after = model(x, t, y)
    assert first > 0 and len(graphs) == 2 * first          # traced again, as many graphs as the first time
    assert torch.allclose(before, after)
    torch._dynamo.reset()


def test_regional_compile_of_dit_is_one_graph():
    torch._dynamo.reset()
    graphs: list = []
    model = lamamba.create_model("DiT-S/8", image_size=16, latent_downsample=1, in_channels=1, num_classes=10,
                                 hidden_size=16, depth=3, num_heads=2)
    compile_model(model, backend=_counting_backend(graphs))
    model(*inputs())
    assert len(graphs) == 1                       # three identical blocks, one graph
    torch._dynamo.reset()


def test_inductor_cache_dir_order(monkeypatch, tmp_path):
    for name in ("TORCHINDUCTOR_CACHE_DIR", "LAMAMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert inductor_cache_dir() == tmp_path / ".cache" / "lamamba" / "inductor"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inductor_cache_dir() == tmp_path / "xdg" / "lamamba" / "inductor"
    monkeypatch.setenv("LAMAMBA_CACHE_DIR", str(tmp_path / "lm"))
    assert inductor_cache_dir() == tmp_path / "lm" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "ind"))
    assert inductor_cache_dir() == tmp_path / "ind"
    # PyTorch sets the variable to its default /tmp folder when torch._dynamo is imported: that counts as unset
    from torch._inductor.runtime.runtime_utils import default_cache_dir
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    assert inductor_cache_dir() == tmp_path / "lm" / "inductor"


def test_importing_the_package_keeps_the_persistent_cache(tmp_path):
    """In a new process without the variables, the cache after importing lamamba (and torch._dynamo) is ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "LAMAMBA_CACHE_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    code = ("import torch._dynamo, lamamba.train\nfrom lamamba.models.compile import use_persistent_cache\n"
            "print(use_persistent_cache())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == str(tmp_path / "lamamba" / "inductor")


def test_persistent_caches_are_set_before_the_first_kernel(monkeypatch, tmp_path):
    """Triton's cache goes next to Inductor's unless set, and both are set before ``compile_model``'s eager forward
    runs (this package's Triton kernels compile in it on GPUs)."""
    from lamamba.models.compile import use_persistent_cache

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, "")   # recorded, so that the values compile_model sets are undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv("LAMAMBA_CACHE_DIR", str(tmp_path))
    model, seen = tiny().eval(), []
    forward = model.forward
    model.forward = lambda *a, **k: (seen.append(os.environ.get("TRITON_CACHE_DIR")), forward(*a, **k))[1]
    compile_model(model, backend="eager")
    assert seen == [str(tmp_path / "inductor" / "triton")]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    use_persistent_cache()
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "mine")
    release_compiled()


def test_compile_scope_is_checked():
    with pytest.raises(ValueError, match="compile scope"):
        compile_model(tiny(), scope="blocks")
    with pytest.raises(ValueError, match="compile scope"):
        resolve_compile_scope("blocks", cuda_graphs=True)


def test_compile_scope_default_rule():
    """Regional with CUDA graphs (as fast as the whole model, less to compile; the GPU test below), the whole model
    without them; an explicit choice wins."""
    assert resolve_compile_scope(None, cuda_graphs=True) == "regional"
    assert resolve_compile_scope(None, cuda_graphs=False) == "full"
    assert resolve_compile_scope("full", cuda_graphs=True) == "full"
    assert resolve_compile_scope("regional", cuda_graphs=False) == "regional"


def test_cuda_graphs_default_rule():
    """On by default where measured: compiled on CUDA, one process or several with regional compilation
    (LaMamba-Diff-S and -XL on an H200, DDP under torchrun); not for the whole model in several processes; an explicit
    choice wins, and asking for them without a compiled model on CUDA is an error."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    auto = dict(compiled=True, device=cuda, distributed=False)
    assert resolve_cuda_graphs(None, **auto)
    assert resolve_cuda_graphs(None, **{**auto, "distributed": True})
    assert resolve_cuda_graphs(None, **{**auto, "distributed": True, "scope": "regional"})
    assert not resolve_cuda_graphs(None, **{**auto, "distributed": True, "scope": "full"})
    assert resolve_cuda_graphs(None, **{**auto, "scope": "full"})
    assert not resolve_cuda_graphs(None, **{**auto, "compiled": False})
    assert not resolve_cuda_graphs(None, **{**auto, "device": cpu})
    assert resolve_cuda_graphs(True, **{**auto, "distributed": True})
    assert not resolve_cuda_graphs(False, **auto)
    for off in (dict(compiled=False), dict(device=cpu)):
        with pytest.raises(ValueError, match="--cuda-graphs needs a compiled model on a CUDA device"):
            resolve_cuda_graphs(True, **{**auto, **off})


def test_plain_torch_compile_does_not_build_window_tables():
    """The attention windows' index and masks are buffers of the model: a plain ``torch.compile(model)`` called
    before any eager forward (cold caches) reads them instead of tracing their construction (which it used to run on
    the host in every step; on an H200 Inductor's C++ backend even failed on it). The reference (CPU) scan route's
    path tensors are ``compile_model``'s warm-up's business; the Triton route has none."""
    targets: list[str] = []
    torch._dynamo.reset()
    model = tiny().train()
    window_layout._cache.clear()   # cold after construction: only the model's own buffers hold the tables
    assert not any(k.endswith(("relative_position_index", "attn_mask")) for k in model.state_dict())  # not saved
    out = torch.compile(model, backend=_target_backend(targets), fullgraph=True)(*inputs())
    assert out.shape == (2, 2, 16, 16)
    found = _calls_of(targets, WINDOW_TABLE_OPS)
    assert not found, found
    torch._dynamo.reset()


def _watch_kernel_compiles(monkeypatch, phase: list) -> list:
    """(phase[0] at the time, kernel, whether in the main thread) for each compile of this package's Triton kernels
    (Triton calls ``compile`` for every specialisation not in memory, also when its disk cache has it). A kernel gets
    its ``compile`` attribute with its launcher for the current device, made here first (Triton 3.6)."""
    import importlib
    import pkgutil
    import threading

    from triton.runtime.jit import JITFunction

    import lamamba.ops

    seen = []
    for info in pkgutil.iter_modules(lamamba.ops.__path__):
        if not info.name.endswith("_kernels"):
            continue
        for name, kernel in vars(importlib.import_module(f"lamamba.ops.{info.name}")).items():
            if isinstance(kernel, JITFunction):
                kernel.device_caches[torch.cuda.current_device()]
                def compile_and_record(*args, _compile=kernel.compile, _name=name, **kwargs):
                    seen.append((phase[0], _name, threading.current_thread() is threading.main_thread()))
                    return _compile(*args, **kwargs)
                monkeypatch.setattr(kernel, "compile", compile_and_record)
    return seen


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("scope", ["regional", "full"])
def test_cuda_graph_training_follows_eager(scope, monkeypatch):
    """Training steps of a model compiled with CUDA graphs (regional: every block's forward and backward its own graph
    in one tree; full: one graph) follow eager's losses and parameters over a few AdamW steps (bf16 rounding only).
    The compiled steps compile none of this package's Triton kernels in the main thread: the trace submitted them to
    the pool (``lamamba.ops.triton_launch``)."""
    from lamamba.diffusion import create_diffusion
    from lamamba.training.optim import adamw

    torch.manual_seed(0)
    # no label dropout: its draws would differ between the two runs (eager's RNG stream, Inductor's philox)
    eager = lamamba.create_model("LaMamba-Diff-S", image_size=16, latent_downsample=1, in_channels=1, num_classes=10,
                                 embed_dim=32, cond_dim=64, num_heads=2, window_size=4, class_dropout_prob=0.0).cuda()
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(torch.randn_like(p) * 0.02)   # the zero-initialised modulations would leave most gradients zero
    graphed = copy.deepcopy(eager)
    net = compile_model(graphed, scope=scope, cuda_graphs=True)
    diffusion = create_diffusion()
    # the graphed model first, as in lamamba train: its backward runs before any eager one (an op's lazily cached
    # device tensor, e.g. the attention kernels' table map until session 14, would be born in the CUDA-graph pool)
    runs = {"graphed": (net, adamw(graphed.parameters(), lr=1e-3)), "eager": (eager, adamw(eager.parameters(), lr=1e-3))}
    losses = {name: [] for name in runs}
    phase = ["graphed"]
    compiles = _watch_kernel_compiles(monkeypatch, phase)
    try:
        for step in range(4):
            g = torch.Generator(device="cuda").manual_seed(step)
            x = torch.randn(4, 1, 16, 16, device="cuda", generator=g)
            noise = torch.randn(4, 1, 16, 16, device="cuda", generator=g)
            t = torch.randint(0, 1000, (4,), device="cuda", generator=g)
            y = torch.randint(0, 10, (4,), device="cuda", generator=g)
            for name, (model, opt) in runs.items():
                phase[0] = name
                if name == "graphed":
                    torch.compiler.cudagraph_mark_step_begin()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = diffusion.training_losses(model, x, t, dict(y=y), noise=noise)["loss"].mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses[name].append(loss.item())
        torch.testing.assert_close(torch.tensor(losses["graphed"]), torch.tensor(losses["eager"]), rtol=2e-2, atol=1e-3)
        assert not [kernel for name, kernel, main in compiles if name == "graphed" and main], compiles
        diffs = torch.cat([(a - b).abs().flatten() for a, b in zip(graphed.parameters(), eager.parameters())])
        # an AdamW step moves a parameter by at most ~lr: 4 steps apart is 8e-3, where tiny gradients flip sign in bf16
        assert diffs.max() <= 8e-3 and diffs.mean() <= 5e-4, (diffs.max(), diffs.mean())
    finally:
        release_compiled()
