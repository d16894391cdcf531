"""Gradient norms in the loops people write: AMP with a GradScaler, accumulation, clipping, a GAN.

Each loop is written as a user writes it; the norms the monitor logs are compared with what
torch computes at the same moment (``clip_grad_norm_``, ``torch.linalg.vector_norm``).
"""
from __future__ import annotations

import re


import pytest
import torch
from torch import nn

from monitor import Checkpoint, GradNorms, Guard, LearningRate, Monitor, Summary
from monitor.checkpoint import load_checkpoint
from monitor.log import NullSink
from monitor.records import Text
from monitor.sink import VisdomSink
from helpers.devices import DEVICES
from helpers.monitors import ListSink


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _norm(parameters) -> float:
    return torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in parameters])).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", ["after_backward, then unscale_", "unscale_, then after_backward"])
def test_amp_norms_are_of_the_unscaled_gradients_whichever_the_order(order, device):
    model = _model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**16)
    half = torch.bfloat16 if device == "cpu" else torch.float16  # what each device's AMP uses
    sink = ListSink()
    monitor = Monitor([GradNorms()], sink=sink, raise_errors=True)
    monitor.train_start(model, optimizer, scaler=scaler)
    clipped = []
    for _ in range(4):
        x = torch.randn(8, 6, device=device)
        with torch.autocast(device, dtype=half):
            loss = model(x).float().square().mean()
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        if order.startswith("after_backward"):
            monitor.after_backward()
            scaler.unscale_(optimizer)
        else:
            scaler.unscale_(optimizer)
            monitor.after_backward()
        clipped.append(nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0).item())  # the pre-clip norm
        scaler.step(optimizer)
        scaler.update()
        monitor.step_end(loss=loss)
    logged = sink.points("grad norm")["total"]
    assert [x for x, _ in logged] == [1, 2, 3, 4]
    assert [v for _, v in logged] == pytest.approx(clipped, rel=1e-5)


class _Trainer:
    """A trainer class as people write one: its GradScaler an attribute, never given to train_start."""

    def __init__(self, callbacks: list, tmp_path) -> None:
        self.model = _model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        self.monitor = Monitor(callbacks, sink=ListSink())

    def fit(self, steps: int) -> None:
        self.monitor.train_start(self.model, self.optimizer)
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = self.model(torch.randn(8, 6)).float().square().mean()
            self.optimizer.zero_grad()
            self.scaler.scale(loss).backward()
            self.monitor.after_backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.monitor.step_end(loss=loss)


def test_a_grad_scaler_the_loop_uses_and_train_start_was_not_given_is_named_with_what_it_costs(tmp_path, caplog):
    # A port of an AMP loop dropped scaler=: the norms came out 2**20 too large and a resumed run's
    # scale went back to init_scale, both unsaid.
    with caplog.at_level("WARNING", logger="monitor"):
        trainer = _Trainer([GradNorms(), Checkpoint(tmp_path / "ckpt", every_steps=100)], tmp_path)
        trainer.fit(3)
        trainer.monitor.close()
        _Trainer([GradNorms(), Checkpoint(tmp_path / "other", scaler=trainer.scaler)], tmp_path).fit(2)
        _Trainer([Summary()], tmp_path).fit(2)  # nothing it logs depends on the scale
    said = [r.getMessage() for r in caplog.records if "GradScaler" in r.getMessage()]
    assert said == [
        "monitor: the loop scales its loss with GradScaler self.scaler, which train_start was not given: its "
        "gradient norms are those of the scaled gradients (times the scale); its checkpoints leave the scale out (a "
        "resumed run starts again from init_scale); pass monitor.train_start(model, optimizer, scaler=self.scaler) "
        "(reported once)",
        "monitor: the loop scales its loss with GradScaler self.scaler, which train_start was not given: its "
        "gradient norms are those of the scaled gradients (times the scale); pass monitor.train_start(model, "
        "optimizer, scaler=self.scaler) (reported once)"]
    assert trainer.monitor.sink.points("grad norm")["total"][0][1] > 1000  # what it warned of


@pytest.mark.parametrize("pattern", ["after every micro-batch", "after the last micro-batch"])
def test_accumulation_gives_one_point_a_step_holding_the_accumulated_gradients(pattern):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    sink = ListSink()
    monitor = Monitor([LearningRate(), GradNorms()], sink=sink, raise_errors=True)
    monitor.train_start(model, optimizer)
    expected, rates = [], []
    for _ in range(3):
        optimizer.zero_grad()
        for micro in range(4):
            (model(torch.randn(4, 6)).square().mean() / 4).backward()
            if pattern == "after every micro-batch" or micro == 3:
                monitor.after_backward()
        expected.append({"0.Linear": _norm(model[0].parameters()), "2.Linear": _norm(model[2].parameters()),
                         "total": _norm(model.parameters())})
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        monitor.step_end()
    logged = sink.points("grad norm")
    for trace in ("0.Linear", "2.Linear", "total"):
        assert [x for x, _ in logged[trace]] == [1, 2, 3]
        assert [v for _, v in logged[trace]] == pytest.approx([e[trace] for e in expected], rel=1e-5)
    assert sink.points("learning rate")["lr"] == [(1, rates[0]), (2, rates[1]), (3, rates[2])]


def _gan(sink, seed: int = 0):
    torch.manual_seed(seed)
    generator = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6))
    discriminator = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    model = nn.ModuleDict({"G": generator, "D": discriminator})
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4)
    opt_d = torch.optim.SGD(discriminator.parameters(), lr=1e-3)
    monitor = Monitor([Summary(), LearningRate(), GradNorms()], sink=sink, raise_errors=True)
    monitor.train_start(model, {"G": opt_g, "D": opt_d})
    return monitor, generator, discriminator, opt_g, opt_d


def _gan_steps(monitor, generator, discriminator, opt_g, opt_d, steps: int) -> dict[str, list[float]]:
    bce = nn.BCEWithLogitsLoss()
    seen = {"D": [], "G": []}
    for _ in range(steps):
        real, noise = torch.randn(8, 6), torch.randn(8, 4)
        opt_d.zero_grad()
        fake = generator(noise)
        d_loss = bce(discriminator(real), torch.ones(8, 1)) + bce(discriminator(fake.detach()), torch.zeros(8, 1))
        d_loss.backward()
        monitor.after_backward("D")
        seen["D"].append(_norm(discriminator.parameters()))
        opt_d.step()
        opt_g.zero_grad()
        g_loss = bce(discriminator(fake), torch.ones(8, 1))
        g_loss.backward()  # also leaves gradients in D, which only G's pass is not about
        monitor.after_backward(opt_g)
        seen["G"].append(_norm(generator.parameters()))
        opt_g.step()
        monitor.step_end(loss=g_loss)
    return seen


def test_a_gan_step_shows_each_pass_in_its_own_window_one_point_a_step(visdom_server, read_window, tmp_path):
    sink = VisdomSink("gan-passes", port=visdom_server.port, run_dir=tmp_path / "run", flush_every=0.05)
    monitor, *parts = _gan(sink)
    seen = _gan_steps(monitor, *parts, steps=3)
    assert sink.close(timeout=10)
    for name in ("D", "G"):
        window = read_window(visdom_server, "gan-passes", f"grad norm {name}")
        xs, ys = window["total"]
        assert xs == [1, 2, 3] and ys == pytest.approx(seen[name], rel=1e-5)
        assert set(window) == {f"{name}.0.Linear", f"{name}.2.Linear", "total"}  # only that network's layers
    assert read_window(visdom_server, "gan-passes", "learning rate") == {"G": ([1, 2, 3], [2e-4] * 3),
                                                                          "D": ([1, 2, 3], [1e-3] * 3)}


def test_a_gan_is_summarised_and_checkpointed_with_both_optimizers_and_its_scaler(tmp_path):
    sink = ListSink()
    monitor, generator, discriminator, opt_g, opt_d = _gan(sink)
    checkpoint = Checkpoint(tmp_path / "ckpt", every_steps=2)
    monitor = Monitor([Summary(), checkpoint], sink=sink, raise_errors=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    monitor.train_start(nn.ModuleDict({"G": generator, "D": discriminator}), {"G": opt_g, "D": opt_d},
                        scaler=scaler)
    _gan_steps(monitor, generator, discriminator, opt_g, opt_d, steps=2)
    summary = [r for r in sink.records if isinstance(r, Text)][-1]
    assert re.search(r"optimizers</b></td><td>G: Adam \([\d,]+ parameters, lr 0.0002\), D: SGD \([\d,]+ parameters, "
                     r"lr 0.001\)", summary.html)
    saved = load_checkpoint(tmp_path / "ckpt" / "step-000000002.pt")
    assert set(saved["optimizer"]) == {"G", "D"} and saved["classes"]["optimizer"] == {"G": "Adam", "D": "SGD"}
    assert saved["optimizer"]["G"]["state"] and saved["scaler"]["scale"] == 1024.0

    again = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=2, resume=True)], sink=NullSink())
    fresh_g, fresh_d = torch.optim.Adam(generator.parameters(), lr=1.0), torch.optim.SGD(discriminator.parameters(), lr=1.0)
    again.train_start(nn.ModuleDict({"G": generator, "D": discriminator}), {"G": fresh_g, "D": fresh_d},
                      scaler=torch.amp.GradScaler("cpu"))
    assert fresh_g.param_groups[0]["lr"] == 2e-4 and fresh_d.param_groups[0]["lr"] == 1e-3
    assert again.state.step == 2


def test_an_overflow_step_is_a_counted_gap_and_the_loss_scale_drops_at_it(visdom_server, read_window,
                                                                          read_window_raw, tmp_path, caplog):
    caplog.set_level("WARNING", logger="monitor")
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    sink = VisdomSink("amp-overflow", port=visdom_server.port, run_dir=tmp_path / "run", flush_every=0.05)
    monitor = Monitor([GradNorms(loss_scale=True)], sink=sink, raise_errors=True)
    monitor.train_start(model, optimizer, scaler=scaler)
    for step in range(1, 6):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(torch.randn(8, 6)).float().square().mean()
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        if step == 3:
            model[0].weight.grad[0, 0] = float("inf")  # an overflow: the scaler skips this step
        monitor.after_backward()
        scaler.step(optimizer)
        scaler.update()
        monitor.step_end(loss=loss)
    assert sink.close(timeout=10)
    assert not [r for r in caplog.records if "drawn as a gap" in r.getMessage()]  # the scaler's skip is no news
    norms = read_window(visdom_server, "amp-overflow", "grad norm")
    assert norms["total"][0] == [1, 2, 3, 4, 5] and norms["total"][1][2] is None  # a gap at step 3
    layout = read_window_raw(visdom_server, "amp-overflow", "grad norm")["content"]["layout"]
    assert layout["legend"]["title"]["text"] == "1 step not finite, shown as gaps"  # the step skipped, not 2 points
    xs, scales = read_window(visdom_server, "amp-overflow", "loss scale")["scale"]
    assert xs == [1, 2, 3, 4, 5] and scales[2] == scales[1] / 2 == 2.0**15


def test_after_backward_names_an_optimizer_given_to_train_start():
    monitor = Monitor([GradNorms()], sink=NullSink(), raise_errors=True)
    model = _model()
    monitor.train_start(model, {"G": torch.optim.SGD(model.parameters(), lr=0.1)})
    with pytest.raises(ValueError, match=r"optimizer must name one of those given to train_start \(G\), got 'D'"):
        monitor.after_backward("D")
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, a list of them or a mapping"):
        monitor.train_start(model, "sgd")
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler, got float"):
        monitor.train_start(model, scaler=65536.0)


def _two_passes(callback, sink, steps: int, d_pass: str | None = "D") -> None:
    """A GAN of two Linear layers, each optimizer's backward pass named (D's as ``d_pass``)."""
    torch.manual_seed(0)
    generator, discriminator = nn.Linear(4, 6), nn.Linear(6, 1)
    opt_g, opt_d = torch.optim.SGD(generator.parameters(), lr=0.1), torch.optim.SGD(discriminator.parameters(), lr=0.1)
    monitor = Monitor([callback], sink=sink, raise_errors=True)
    monitor.train_start(nn.ModuleDict({"G": generator, "D": discriminator}), {"G": opt_g, "D": opt_d})
    for _ in range(steps):
        opt_d.zero_grad()
        discriminator(generator(torch.randn(8, 4)).detach()).mean().backward()
        monitor.after_backward(d_pass)
        opt_d.step()
        opt_g.zero_grad()
        discriminator(generator(torch.randn(8, 4))).mean().backward()
        monitor.after_backward("G")
        opt_g.step()
        monitor.step_end()


def test_the_update_ratio_of_a_gan_is_each_optimizer_s_in_a_window_of_its_own():
    sink = ListSink()
    _two_passes(GradNorms(update_ratio=True), sink, steps=2)
    # One window held both networks' layers and one total over both: a ratio of no optimizer's.
    d, g = sink.points("update ratio D"), sink.points("update ratio G")
    assert not sink.points("update ratio") and set(d) == {"D", "total"} and set(g) == {"G", "total"}
    assert all(v > 0 for _, v in d["D"] + g["G"]) and [x for x, _ in d["D"]] == [1, 2]  # D's was 0 once


def test_a_discriminator_whose_body_is_unfrozen_mid_run_has_its_body_in_its_norms():
    sink = ListSink()
    torch.manual_seed(0)
    generator, body, head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 1)
    model = nn.ModuleDict({"generator": generator, "body": body, "head": head})
    body.requires_grad_(False)
    opt_g, opt_d = torch.optim.SGD(generator.parameters(), lr=0.1), torch.optim.SGD(head.parameters(), lr=0.1)
    monitor = Monitor([GradNorms()], sink=sink, raise_errors=True)
    monitor.train_start(model, {"G": opt_g, "D": opt_d})
    clipped = []
    for step in range(1, 4):
        if step == 2:
            body.requires_grad_(True)
            opt_d.add_param_group({"params": body.parameters()})
        opt_d.zero_grad()
        head(body(generator(torch.randn(8, 4)).detach())).mean().backward()
        monitor.after_backward("D")
        clipped.append(nn.utils.clip_grad_norm_([p for g in opt_d.param_groups for p in g["params"]], 1e30).item())
        opt_d.step()
        monitor.step_end()
    norms = sink.points("grad norm D")
    assert [v for _, v in norms["total"]] == pytest.approx(clipped)
    assert [x for x, _ in norms["body"]] == [2, 3]


def test_resuming_a_one_optimizer_checkpoint_with_two_says_what_it_holds(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor([Checkpoint(tmp_path / "ckpt", every_steps=1)], sink=NullSink(), raise_errors=True)
    monitor.train_start(model, optimizer)
    model(torch.randn(2, 6)).sum().backward()
    monitor.after_backward()
    optimizer.step()
    monitor.step_end()
    from monitor import resume
    with pytest.raises(ValueError, match=r"optimizer must be the optimizers .* holds \(one SGD, not named\), got G, D"):
        resume(tmp_path / "ckpt", model, {"G": optimizer, "D": torch.optim.SGD(model.parameters(), lr=0.1)})
    two = {"G": optimizer, "D": torch.optim.SGD(model.parameters(), lr=0.1)}
    monitor = Monitor([Checkpoint(tmp_path / "two", every_steps=1)], sink=NullSink(), raise_errors=True)
    monitor.train_start(model, two)
    monitor.step_end()
    with pytest.raises(ValueError, match=r"optimizer must be the optimizers .* holds, by name \(G, D\), got one SGD"):
        resume(tmp_path / "two", model, optimizer)


def test_a_float64_model_s_norms_are_taken_in_float64():
    model = _model().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sink = ListSink()
    monitor = Monitor([GradNorms(weights=True, update_ratio=True), Guard()], sink=sink, raise_errors=True)
    monitor.train_start(model, optimizer)
    clipped = []
    for _ in range(3):
        loss = model(torch.randn(8, 6, dtype=torch.float64)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward()
        clipped.append(nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0).item())
        optimizer.step()
        monitor.step_end(loss=loss)
    assert [v for _, v in sink.points("grad norm")["total"]] == pytest.approx(clipped, rel=1e-12)
    assert len(sink.points("update ratio")["total"]) == 3


def test_sparse_embedding_gradients_are_normed_as_their_dense_equivalent():
    class Bag(nn.Module):  # a recommender's shape: sparse embeddings, a dense head
        def __init__(self):
            super().__init__()
            self.users, self.items = nn.Embedding(50, 8, sparse=True), nn.Embedding(80, 8, sparse=True)
            self.head = nn.Linear(16, 1)

        def forward(self, users, items):
            return self.head(torch.cat([self.users(users), self.items(items)], dim=1)).squeeze(1)

    torch.manual_seed(0)
    model = Bag()
    sparse = torch.optim.SparseAdam([*model.users.parameters(), *model.items.parameters()], lr=0.01)
    dense = torch.optim.Adam(model.head.parameters(), lr=0.01)
    sink = ListSink()
    monitor = Monitor([GradNorms(), Guard()], sink=sink, raise_errors=True)
    monitor.train_start(model, {"sparse": sparse, "dense": dense})
    seen = []
    for _ in range(3):
        users, items = torch.randint(0, 50, (16,)), torch.randint(0, 80, (16,))  # repeated ids: uncoalesced
        loss = (model(users, items) - 1).square().mean()
        sparse.zero_grad(), dense.zero_grad()
        loss.backward()
        monitor.after_backward()
        seen.append({name: torch.linalg.vector_norm(torch.cat([p.grad.to_dense().flatten() for p in module.parameters()])).item()
                     for name, module in (("users", model.users), ("items", model.items), ("head", model.head))})
        sparse.step(), dense.step()
        monitor.step_end(loss=loss)
    traces = sink.points("grad norm")
    for name in ("users", "items", "head"):
        assert [v for _, v in traces[name]] == pytest.approx([s[name] for s in seen], rel=1e-5)


@pytest.mark.parametrize("where", ["after the step", "in the closure"])
def test_an_lbfgs_closure_s_step_end_belongs_after_the_step_and_one_in_the_closure_is_told(caplog, where):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    lbfgs = torch.optim.LBFGS(model.parameters(), max_iter=5)
    monitor = Monitor([GradNorms()], sink=ListSink(), raise_errors=True)
    monitor.train_start(model, lbfgs)

    def closure():
        lbfgs.zero_grad()
        loss = (model(x) - torch.sin(3 * x)).pow(2).mean()
        loss.backward()
        monitor.after_backward()  # many calls a step: the last one's gradients count
        if where == "in the closure":
            monitor.step_end(loss=loss)
        return loss

    with caplog.at_level("WARNING", logger="monitor"):
        for _ in monitor.steps(3):
            loss = lbfgs.step(closure)
            if where == "after the step":
                monitor.step_end(loss=loss)
    said = [r.getMessage() for r in caplog.records]
    if where == "after the step":
        assert monitor.state.step == 3 and not said
        assert [x for x, _ in monitor.sink.points("grad norm")["total"]] == [1, 2, 3]
    else:
        assert len(said) == 1 and said[0].startswith("monitor: step_end was called 5 times in one step of LBFGS, "
                                                     "which calls its closure several times a step: call step_end "
                                                     "after optimizer.step(closure), not in the closure")


def test_a_pass_left_unnamed_beside_named_ones_is_said_once(caplog):
    # A GAN's D pass left plain pooled G's gradients of the step before into its total, silently.
    with caplog.at_level("WARNING", logger="monitor"):
        _two_passes(GradNorms(), NullSink(), steps=3, d_pass=None)
    assert [r.getMessage() for r in caplog.records] == [
        "monitor: after_backward() names no optimizer in a run whose other passes name theirs: its window "
        "'grad norm' takes the gradients of every optimizer, those left from the others' passes too; name the "
        "one stepping next, after_backward('D') or after_backward(opt_d)"]
