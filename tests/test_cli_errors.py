"""Bad input anywhere gives one line naming the problem, no traceback, and the exit code of its kind."""
import numpy as np
import pytest
import torch

import lamamba
from lamamba import cli
from lamamba.pretrained import save_pretrained

TINY_TRAIN = ["--model-arg", "embed_dim=8", "--model-arg", "cond_dim=16", "--global-batch-size", "8",
              "--sample-num", "0", "--no-tensorboard", "--max-steps", "1"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = lamamba.create_model("LaMamba-Diff-S", image_size=16, in_channels=1, num_classes=10, latent_downsample=1,
                                 embed_dim=8, cond_dim=16, num_heads=2, window_size=4)
    info = {"model": model.config.to_dict(), "image_size": 16, "image_channels": 1, "num_classes": 10,
            "latent": None, "diffusion": {"diffusion_steps": 1000, "noise_schedule": "linear", "learn_sigma": True}}
    return save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "c", info)


@pytest.fixture(scope="module")
def bad_npz(tmp_path_factory):
    root = tmp_path_factory.mktemp("npz")
    (root / "not_a_zip.npz").write_bytes(b"this is no zip archive at all" * 10)
    np.savez(root / "objects.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(2))
    np.savez(root / "ok.npz", mu=np.zeros(2), sigma=np.eye(2))
    return root


TRAIN_CASES = [  # (flags, words the message must contain)
    (["--device", "tpu7"], "--device"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--betas", "0.9", "1.5"], "--betas"),
    (["--image-size", "0"], "--image-size"),
    (["--seed", "-1"], "--seed"),
    (["--threads", "0"], "--threads"),
    (["--num-workers", "-1"], "--num-workers"),
    (["--model-arg", "embed_dim=abc"], "embed_dim"),
    (["--model-arg", "depths=3"], "depths"),
    (["--model-arg", "embed_dim=-8"], "embed_dim"),
    (["--model-arg", "class_dropout_prob=1.5"], "class_dropout_prob"),
    (["--preset", "small"], "--data"),
    (["--cuda-graphs", "--no-compile"], "--cuda-graphs"),
    (["--peak-tflops", "0"], "--peak-tflops"),
]


def _one_line_error(capsys, code, argv, words):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == code, (argv, rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"lamamba {argv[0]}: error:") and words in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("flags,words", TRAIN_CASES, ids=[" ".join(f) for f, _ in TRAIN_CASES])
def test_train_bad_input(tmp_path, capsys, flags, words):
    run_dir = tmp_path / "run"
    _one_line_error(capsys, cli.EXIT_USAGE, ["train", "--run-dir", str(run_dir), *TINY_TRAIN, *flags], words)
    assert not run_dir.exists()  # a failed start leaves no run folder behind


OTHER_CASES = [  # (command, flags with {ckpt} / {npz}, words)
    ("sample", ["{ckpt}", "--cfg-scale", "nan"], "--cfg-scale"),
    ("sample", ["{ckpt}", "--steps", "0"], "--steps"),
    ("sample", ["{ckpt}", "--labels", "a"], "--labels"),
    ("sample", ["{ckpt}", "--seed", "-1"], "--seed"),
    ("sample", ["{ckpt}", "--labels", "10"], "labels"),
    ("sample", ["{ckpt}", "--device", "tpu7"], "--device"),
    ("sample", ["{ckpt}", "--cuda-graphs", "--no-compile"], "--cuda-graphs"),
    ("sample", ["{ckpt}", "--cuda-graphs"], "--compile"),
    ("bench", ["--batch-size", "0"], "--batch-size"),
    ("bench", ["--peak-tflops", "0"], "--peak-tflops"),
    ("bench", ["--image-size", "30"], "--latent-downsample"),
    ("bench", ["--preset", "fashion-mnist", "--in-channels", "0"], "--in-channels"),
    ("bench", ["--steps", "0"], "--steps"),
    ("bench", ["--precision", "fp16", "--device", "cpu"], "fp16"),
    ("flops", ["--model", "LaMamba-Diff-S", "--d-state", "0"], "--d-state"),
    ("flops", ["--d-state", "16"], "--model"),
    ("evaluate", ["{npz}/not_a_zip.npz", "{npz}/ok.npz", "--features", "pixels"], "not_a_zip.npz is not an .npz"),
    ("evaluate", ["{npz}/objects.npz", "{npz}/ok.npz", "--features", "pixels"], "objects.npz holds object arrays"),
]


@pytest.mark.parametrize("command,flags,words", OTHER_CASES, ids=[f"{c} {' '.join(f)}" for c, f, _ in OTHER_CASES])
def test_other_commands_bad_input(tmp_path, capsys, tiny_checkpoint, bad_npz, command, flags, words):
    argv = [command, *(f.format(ckpt=tiny_checkpoint, npz=bad_npz) for f in flags)]
    if command == "sample":
        argv += ["--out", str(tmp_path / "out"), "--num-samples", "2"]
    line = _one_line_error(capsys, cli.EXIT_USAGE, argv, words)
    assert "allow_pickle" not in line
    assert not (tmp_path / "out").exists()  # nothing left behind (no empty .shards/)


def test_a_bad_compile_thread_count_is_bad_input(capsys, monkeypatch):
    monkeypatch.setenv("LAMAMBA_COMPILE_THREADS", "many")
    _one_line_error(capsys, cli.EXIT_USAGE, ["bench", "--model", "LaMamba-Diff-S", "--preset", "fashion-mnist",
                                             "--device", "cpu", "--precision", "fp32", "--compile", "only"],
                    "LAMAMBA_COMPILE_THREADS='many'")


MODEL_CASES = [
    dict(image_size=0), dict(image_size=-256), dict(image_size="256"), dict(latent_downsample=0),
    dict(num_heads=0), dict(patch_size=0), dict(window_size=0), dict(embed_dim=0), dict(ssm_ratio=0),
    dict(depths=(-1, 1, 1, 0)), dict(depths=3), dict(class_dropout_prob=1.5), dict(embed_dim="abc"),
    dict(d_state=0), dict(decoder_depths=(1, 1)), dict(mlp_ratio=float("nan")),
]


@pytest.mark.parametrize("model", ["LaMamba-Diff-S", "DiT-S/2"])
@pytest.mark.parametrize("kwargs", MODEL_CASES, ids=[str(k) for k in MODEL_CASES])
def test_create_model_bad_values(model, kwargs):
    if model.startswith("DiT") and set(kwargs) & {"window_size", "embed_dim", "ssm_ratio", "depths", "d_state",
                                                  "decoder_depths"}:
        pytest.skip("not a DiT option")
    with pytest.raises(ValueError) as info:
        lamamba.create_model(model, **kwargs)
    message = str(info.value)
    assert "\n" not in message and (next(iter(kwargs)) in message or "divisible" in message), message


def test_labels_outside_the_table_are_a_clear_error():
    model = lamamba.create_model("DiT-S/2", image_size=16, latent_downsample=1, in_channels=1, num_classes=10,
                                 depth=1, hidden_size=32, num_heads=2)
    x, t = torch.zeros(2, 1, 16, 16), torch.zeros(2, dtype=torch.long)
    model(x, t, torch.tensor([0, 10]))  # 10 = the null class: allowed
    for bad in ([0, 11], [-1, 0]):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 10\]"):
            model(x, t, torch.tensor(bad))


def test_disk_full_during_a_save_is_exit_3_in_one_line(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import lamamba.training.checkpoint as training_checkpoint

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")
    monkeypatch.setattr(training_checkpoint, "save_file", full)
    rc = cli.main(["train", "--run-dir", str(tmp_path / "run"), *TINY_TRAIN])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_SYSTEM and "Traceback" not in err
    assert "No space left on device" in err.strip().splitlines()[-1]


def test_exit_codes_are_distinct():
    codes = [cli.EXIT_OK, cli.EXIT_DIVERGED, cli.EXIT_USAGE, cli.EXIT_SYSTEM, cli.EXIT_INTERNAL, cli.EXIT_SIGINT,
             cli.EXIT_SIGTERM]
    assert len(set(codes)) == len(codes) and (cli.EXIT_SIGINT, cli.EXIT_SIGTERM) == (130, 143)
