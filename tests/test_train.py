import math

import pytest
import torch

from compress.errors import RecipeError, TargetError
from compress.recipe import TrainConfig
from compress.train import resolve_device, train_


def test_auto_trains_where_the_hardware_is():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_says_so():
    with pytest.raises(TargetError, match="train.device = 'cuda', but PyTorch sees no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_returns_the_model_on_the_cpu(tiny_data):
    from compress.models import create_model

    model = create_model("cnn", width=4, depth=1)
    train_(model, tiny_data.train.head(256), TrainConfig(epochs=1, batch_size=64, device="cuda"), val=tiny_data.val)
    assert next(model.parameters()).device.type == "cpu"


def test_augmentation_is_refused_for_feature_vectors():
    from compress.data import Split
    from compress.models import create_model

    split = Split(torch.randn(16, 8), torch.zeros(16, dtype=torch.long), 0.0, 1.0, 1.0)
    with pytest.raises(RecipeError, match="augmentation .* is for images, and these data are feature vectors"):
        train_(create_model("mlp", in_features=8, num_classes=2), split, TrainConfig(epochs=1, augment=True))


def _weights(model):
    return [p.detach().clone() for p in model.state_dict().values()]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_auto_is_bf16_where_native_and_fp32_elsewhere(tiny_data, monkeypatch, capsys, native):
    import compress.train as train_mod
    from compress.models import create_model

    class Spy(torch.nn.Module):  # what the training loop really ran: autocast on or off
        def __init__(self):
            super().__init__()
            self.net, self.seen = create_model("cnn", width=4, depth=1), set()

        def forward(self, x):
            if self.training:
                self.seen.add(torch.is_autocast_enabled("cpu"))
            return self.net(x)

    monkeypatch.setattr(train_mod, "native_bf16", lambda device: native)
    monkeypatch.setattr(train_mod, "_told", set())
    ran = {}
    for setting in ("auto", True, False):
        model = Spy()
        train_(model, tiny_data.train.head(128), TrainConfig(epochs=1, batch_size=64, bf16=setting, device="cpu"))
        ran[setting] = model.seen
    assert ran[True] == {True} and ran[False] == {False}
    assert ran["auto"] == ran[native]
    out = capsys.readouterr().out
    assert f"bf16: auto -> {'bf16 autocast' if native else 'fp32'} on this CPU" in out
    # Asking for bf16 where it is emulated is allowed, and said: it is several times slower.
    assert ("warning: bf16: true on a CPU without native bf16" in out) is (not native)


def test_bf16_takes_true_false_or_auto():
    assert TrainConfig(bf16="auto").bf16 == "auto"
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(bf16="fast")


def test_a_warm_restart_stopped_after_its_first_cycle_is_the_short_schedule(tiny_data):
    """search.halving's promise: a candidate not promoted has exactly the model a restart_epochs-epoch
    schedule makes (same batches, same learning rates), and a promoted one goes on from it."""
    from compress.models import create_model

    split = tiny_data.train.head(256)
    # On the CPU: CUDA's convolution kernels are not bit-reproducible run to run (the same schedule on an
    # H200 gave the same losses and weights equal only to float rounding).
    cfg = dict(batch_size=64, lr=0.05, warmup_epochs=0.5, device="cpu")
    torch.manual_seed(0)
    short = create_model("cnn", width=4, depth=1)
    stopped, full = create_model("cnn", width=4, depth=1), create_model("cnn", width=4, depth=1)
    stopped.load_state_dict(short.state_dict())
    full.load_state_dict(short.state_dict())
    train_(short, split, TrainConfig(epochs=1, **cfg), val=tiny_data.val)
    seen = []
    hist = train_(stopped, split, TrainConfig(epochs=3, restart_epochs=1, **cfg), val=tiny_data.val,
                  at_restart=lambda acc, s: seen.append(acc) or False)
    assert len(hist) == 1 and seen == hist
    for a, b in zip(_weights(short), _weights(stopped)):
        assert torch.equal(a, b)
    hist = train_(full, split, TrainConfig(epochs=3, restart_epochs=1, **cfg), val=tiny_data.val,
                  at_restart=lambda acc, s: True)
    assert len(hist) == 3 and hist[0] == seen[0]
    assert any(not torch.equal(a, b) for a, b in zip(_weights(short), _weights(full)))


def test_a_restart_schedule_is_two_cycles_each_with_its_own_warm_up_and_decay():
    from compress.train import lr_schedule

    f = lr_schedule(TrainConfig(epochs=4, restart_epochs=1, warmup_epochs=0.5), steps_per_epoch=10)
    lr = [f(s) for s in range(40)]
    assert lr[4] == 1.0 and lr[9] < 0.1  # the first cycle: 5 warm-up steps, then cosine towards 0 in epoch 1
    assert lr[10] == pytest.approx(0.2) and lr[14] == 1.0 and lr[39] < 0.01  # the second: warm-up again
    # Without a restart: one warm-up, one cosine over the 40 steps, as before restarts existed.
    plain = lr_schedule(TrainConfig(epochs=4, warmup_epochs=0.5), steps_per_epoch=10)
    assert [plain(s) for s in range(40)] == [(s + 1) / 5 if s < 5 else 0.5 * (1 + math.cos(math.pi * (s - 5) / 35))
                                             for s in range(40)]


def test_restart_must_fall_inside_the_schedule():
    with pytest.raises(ValueError, match=r"restart_epochs \(4\) must be below epochs \(4\)"):
        TrainConfig(epochs=4, restart_epochs=4)
    assert "restart_epochs" not in TrainConfig(epochs=4).model_dump()  # named only where there is a restart


def test_cpu_fp32_training_takes_the_memory_format_whose_step_was_faster(monkeypatch):
    from compress import train
    from compress.models import create_model

    cpu = torch.device("cpu")
    model = create_model("cnn", width=4, depth=1)
    probes = []

    def fake(m, x, times, slow=torch.contiguous_format):  # contiguous 3x slower a step
        probes.append(tuple(x.shape))
        for fmt in times:
            times[fmt] += [1.0, 3.0 if fmt == slow else 1.0, 3.0 if fmt == slow else 1.0]

    monkeypatch.setattr(train, "_formats", {})
    monkeypatch.setattr(train, "_time_steps", fake)
    assert train.training_format(model, (16, 1, 28, 28), cpu) == torch.channels_last
    # Once per architecture, batch shape and thread count: every model of the kind then trains alike.
    assert train.training_format(create_model("cnn", width=4, depth=1), (16, 1, 28, 28), cpu) == torch.channels_last
    assert len(probes) == 1
    monkeypatch.setattr(train, "_time_steps", lambda m, x, t: fake(m, x, t, slow=torch.channels_last))
    assert train.training_format(model, (32, 1, 28, 28), cpu) == torch.contiguous_format
    # Feature vectors and GPUs are not probed; a model the probe cannot drive trains as it is.
    assert train.training_format(model, (16, 784), cpu) == torch.contiguous_format
    assert train.training_format(model, (16, 1, 28, 28), torch.device("cuda")) == torch.contiguous_format
    assert len(probes) == 2

    def broken(m, x, times):
        raise RuntimeError("forward wants two inputs")

    monkeypatch.setattr(train, "_time_steps", broken)
    assert train.training_format(create_model("cnn", width=8, depth=1), (16, 1, 28, 28), cpu) == torch.contiguous_format


def test_the_memory_format_probe_leaves_the_model_and_the_random_stream_alone(monkeypatch):
    from compress import train
    from compress.models import create_model

    monkeypatch.setattr(train, "_formats", {})
    model = create_model("cnn", width=4, depth=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    train.training_format(model, (8, 1, 28, 28), torch.device("cpu"))  # real training steps, on copies
    after_probe = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after_probe, torch.rand(3))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_logits_of_images_run_channels_last_and_leave_the_model_as_it_was(tiny_data):
    from compress.models import create_model
    from compress.train import predict_logits

    torch.manual_seed(0)
    model = create_model("cnn", width=8, depth=1).eval()
    split = tiny_data.val.head(64)
    with torch.no_grad():
        plain = model(split.inputs())
    got = predict_logits(model, split, batch_size=16)
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-4)  # the same arithmetic in another layout
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # back in the format training and export expect


def test_soft_targets_in_bf16_stay_close_to_fp32(tiny_data):
    from compress.models import create_model
    from compress.train import iter_logits

    torch.manual_seed(0)
    model = create_model("cnn", width=8, depth=1).eval()
    split = tiny_data.val.head(64)
    fp32 = torch.cat([lg for _, lg in iter_logits(model, split, 32)])
    bf16 = torch.cat([lg for _, lg in iter_logits(model, split, 32, bf16=True)])
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32)  # autocast did run
    soft = lambda z: torch.softmax(z / 4.0, dim=1)  # noqa: E731 - the KD targets at a typical temperature
    assert (soft(bf16) - soft(fp32)).abs().max() < 0.02


def test_threads_from_sets_the_threads_of_every_training_step(tiny_data):
    """compress.study's baselines made while other workers run: each step takes the threads ``fn`` says then
    (1 for the first steps, 2 after), and the block leaves the hook as it found it."""
    from compress import train
    from compress.models import create_model

    seen = []  # the threads each call found
    before = torch.get_num_threads()

    def fn():
        seen.append(torch.get_num_threads())
        return 1 if len(seen) <= 4 else 2

    try:
        torch.set_num_threads(2)
        with train.threads_from(fn):
            train_(create_model("cnn", width=4, depth=1), tiny_data.train.head(512),
                   TrainConfig(epochs=1, batch_size=64, device="cpu"))
            assert torch.get_num_threads() == 2
        assert train._threads is None
        assert 1 in seen and seen[-1] == 2
    finally:
        torch.set_num_threads(before)
