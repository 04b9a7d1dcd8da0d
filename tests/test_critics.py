"""Tests of edvae.critics: every critic's bound, the momentum critic's estimate against brute
force and closed forms, its EMA and ring buffer against hand computations, its state round trip
and gradient isolation, and make_critic's validation."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from edvae import estimators as E
from edvae.critics import (
    CRITICS,
    BilinearCritic,
    EncoderCritic,
    MLPCritic,
    MomentumCritic,
    ScoreCritic,
    make_critic,
)
from edvae.errors import EdvaeError

F64 = torch.float64


class LinearEncoder(nn.Module):
    """x -> (W x + b, c): a Gaussian encoder whose keys the tests can steer exactly."""

    def __init__(self, dim: int, logvar: float = -1.0) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.logvar = nn.Parameter(torch.full((dim,), logvar))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        mu = self.linear(x)
        return mu, self.logvar.expand_as(mu)


def identity_encoder(dim: int) -> LinearEncoder:
    enc = LinearEncoder(dim).double()
    with torch.no_grad():
        enc.linear.weight.copy_(torch.eye(dim, dtype=F64))
        enc.linear.bias.zero_()
    return enc


def posterior_batch(batch, dim, seed, logvar_low=-2.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, dim, generator=g, dtype=F64)
    logvar = logvar_low + (1.0 - logvar_low) * torch.rand(batch, dim, generator=g, dtype=F64)
    z = mu + (0.5 * logvar).exp() * torch.randn(batch, dim, generator=g, dtype=F64)
    return z, mu, logvar


def brute_momentum_estimate(queries, keys, negatives, tau):
    """mean_i [ l_i0 - log sum_k exp l_ik ] + log(n + 1), written out row by row."""
    total = 0.0
    for u, k in zip(queries.tolist(), keys.tolist(), strict=True):
        logits = [sum(a * b for a, b in zip(u, k, strict=True)) / tau]
        logits += [sum(a * b for a, b in zip(u, v, strict=True)) / tau for v in negatives.tolist()]
        top = max(logits)
        total += logits[0] - (top + math.log(sum(math.exp(s - top) for s in logits)))
    return total / queries.shape[0] + math.log(negatives.shape[0] + 1)


def unit(t):
    return t / t.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# the batch critics: encoder, bilinear, MLP (<= log B)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("batch", "logvar_low"), [(2, -2.0), (16, -2.0), (16, -12.0), (64, -12.0)])
def test_batch_critics_never_exceed_log_batch(seed, batch, logvar_low):
    """Every batch, including narrow posteriors (positives perfectly identifiable) and
    saturated learned critics, stays below log B."""
    z, mu, logvar = posterior_batch(batch, 3, seed, logvar_low)
    bilinear = make_critic("bilinear", 3).double()
    with torch.no_grad():
        bilinear.score.weight.mul_(100.0)
    for critic in (make_critic("encoder", 3), bilinear, make_critic("mlp", 3, hidden=8, embedding=4).double()):
        assert critic.bound(batch) == math.log(batch)
        assert critic(z, mu, logvar).item() <= math.log(batch) + 1e-12


def test_encoder_critic_reaches_log_batch_when_posteriors_separate():
    """Far apart, narrow posteriors: q(z_i|x_j) ~ 0 for j != i, so the bound is attained."""
    mu = 30.0 * torch.eye(8, dtype=F64)
    logvar = torch.full_like(mu, -6.0)  # the expanded square's rounding ~ 1e-16 mu^2 / sigma^2
    value = make_critic("encoder", 8)(mu.clone(), mu, logvar)
    assert abs(value.item() - math.log(8)) < 1e-9


def test_batch_critics_are_infonce_with_their_scores():
    z, mu, logvar = posterior_batch(8, 3, seed=7)
    torch.testing.assert_close(EncoderCritic()(z, mu, logvar), E.infonce(z, mu, logvar), rtol=0, atol=0)
    for name in ("bilinear", "mlp"):
        critic = make_critic(name, 3).double()
        assert isinstance(critic, ScoreCritic)
        expected = E.infonce(z[2:5], mu, logvar, critic=critic.score, row_offset=2)
        torch.testing.assert_close(critic(z[2:5], mu, logvar, row_offset=2), expected, rtol=0, atol=0)
        critic(z, mu, logvar).backward()
        assert all(p.grad is not None for p in critic.parameters())
        critic.update(nn.Linear(1, 1))  # a no-op for batch critics


# ---------------------------------------------------------------------------------------------
# the momentum critic: estimate and bound (<= log(K + 1))


def filled_critic(dim=3, queue_size=7, fill=5, seed=0, **options):
    torch.manual_seed(seed)
    critic = MomentumCritic(LinearEncoder(dim).double(), dim, queue_size=queue_size, **options).double()
    if fill:
        critic.enqueue(unit(torch.randn(fill, critic.queue.shape[1], dtype=F64)))
    return critic


@pytest.mark.parametrize("fill", [0, 3, 7, 12])
@pytest.mark.parametrize("projection", [None, 5])
def test_momentum_estimate_matches_brute_force(fill, projection):
    """Only the filled part of the queue is used: n = min(fill, K) negatives."""
    critic = filled_critic(fill=fill, projection=projection, hidden=6, temperature=0.3)
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, generator=g, dtype=F64)
    mu_key, _ = critic.key_encoder(x)
    with torch.no_grad():
        queries, keys = unit(critic.head(z)), unit(critic.key_head(mu_key))
    n = min(fill, 7)
    expected = brute_momentum_estimate(queries, keys, critic.queue[:n], 0.3)
    assert abs(critic(z, None, None, x).item() - expected) < 1e-12
    assert critic.estimate(z, x).item() <= math.log(n + 1) + 1e-12


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_momentum_estimate_never_exceeds_log_k_plus_one(seed, tau):
    """Random batches and perfectly aligned positives (query = key) at every fill level."""
    critic = filled_critic(dim=4, queue_size=16, fill=0, seed=seed, temperature=tau)
    critic.key_encoder.load_state_dict(identity_encoder(4).state_dict())
    g = torch.Generator().manual_seed(seed)
    for _ in range(6):
        x = torch.randn(8, 4, generator=g, dtype=F64)
        bound = math.log(int(critic.size) + 1)
        for z in (torch.randn(8, 4, generator=g, dtype=F64), 3.0 * x):  # random; aligned
            value = critic.estimate(z, x).item()
            assert value <= bound <= critic.bound() + 1e-15
        critic.update(critic.key_encoder)  # enqueue the keys, fill level 8, 16, 16, ...
    assert int(critic.size) == 16


def test_momentum_estimate_closed_form_near_log_k_plus_one():
    """Aligned positives (cos 1), antipodal negatives (cos -1): every row gives
    -log(1 + K exp(-2/tau)), so I_NCE = log(K + 1) - log1p(K e^{-2/tau}) ~ log(K + 1)."""
    k, tau = 4096, 0.1
    critic = MomentumCritic(identity_encoder(2), 2, queue_size=k, temperature=tau).double()
    direction = torch.tensor([[0.6, 0.8]], dtype=F64)
    critic.enqueue(-direction.expand(k, 2))
    x = direction * torch.arange(1.0, 9.0, dtype=F64)[:, None]  # same direction, any length
    value = critic.estimate(x.clone(), x).item()
    expected = math.log(k + 1) - math.log1p(k * math.exp(-2.0 / tau))
    assert abs(value - expected) < 1e-12
    assert 0 < math.log(k + 1) - value < 1e-5


def test_momentum_estimate_zero_when_positives_indistinguishable():
    """Queue full of copies of the positive key: all K + 1 logits equal, I_NCE = 0 exactly;
    with a large temperature, random keys are nearly indistinguishable too: I_NCE ~ 0."""
    critic = MomentumCritic(identity_encoder(3), 3, queue_size=50).double()
    x = torch.tensor([[1.0, 2.0, -1.0]], dtype=F64).expand(6, 3)
    critic.enqueue(unit(x[:1]).expand(50, 3))
    assert abs(critic.estimate(torch.randn(6, 3, dtype=F64) + x, x).item()) < 1e-12

    torch.manual_seed(0)
    critic = MomentumCritic(identity_encoder(8), 8, queue_size=256, temperature=100.0).double()
    critic.enqueue(unit(torch.randn(256, 8, dtype=F64)))
    x, z = torch.randn(64, 8, dtype=F64), torch.randn(64, 8, dtype=F64)  # z independent of x
    value = critic.estimate(z, x).item()
    assert abs(value) < 2e-4 and critic.bound() > 5.5


def test_momentum_estimate_exchangeable_negatives_is_not_positive():
    """tau = 0.1, queries independent of keys and negatives from the keys' distribution: the
    positive is exchangeable with the negatives, so E[I_NCE] <= 0 (Jensen); far below log(K+1)."""
    torch.manual_seed(1)
    critic = MomentumCritic(identity_encoder(8), 8, queue_size=255).double()
    critic.enqueue(unit(torch.randn(255, 8, dtype=F64)))
    values = [critic.estimate(torch.randn(64, 8, dtype=F64), torch.randn(64, 8, dtype=F64)).item() for _ in range(5)]
    assert sum(values) / 5 < 0.0 < critic.bound()


def test_momentum_key_sample_uses_the_given_noise():
    critic = filled_critic(dim=3, key="sample")
    x, eps = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    mu, logvar = critic.key_encoder(x)
    torch.testing.assert_close(critic.keys(x, eps), unit(mu + (0.5 * logvar).exp() * eps), rtol=0, atol=1e-15)
    torch.testing.assert_close(filled_critic(dim=3).keys(x), unit(mu), rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# momentum update, ring buffer


@pytest.mark.parametrize("m", [0.0, 0.5, 0.99])
def test_momentum_update_is_the_ema_by_hand(m):
    """xi_1 = m xi_0 + (1 - m) theta_1, then xi_2 = m xi_1 + (1 - m) theta_2; buffers copied;
    the projection head's key copy follows the head likewise."""
    torch.manual_seed(0)
    encoder = LinearEncoder(3).double()
    critic = MomentumCritic(encoder, 3, momentum=m, projection=4, hidden=5).double()
    xi = {n: p.detach().clone() for n, p in critic.named_parameters() if n.startswith("key_")}
    for _ in range(2):
        with torch.no_grad():
            for p in list(encoder.parameters()) + list(critic.head.parameters()):
                p.add_(torch.randn_like(p))
            encoder.calls.add_(1.0)
        theta = {f"key_encoder.{n}": p for n, p in encoder.named_parameters()}
        theta.update({f"key_head.{n}": p for n, p in critic.head.named_parameters()})
        critic.momentum_update(encoder)
        for name, p in critic.named_parameters():
            if name.startswith("key_"):
                xi[name] = m * xi[name] + (1 - m) * theta[name].detach()
                torch.testing.assert_close(p, xi[name], rtol=0, atol=1e-15)
                if m == 0.0:
                    assert torch.equal(p, theta[name])
        assert torch.equal(critic.key_encoder.calls, encoder.calls)


def test_momentum_update_rejects_another_encoder():
    critic = filled_critic(dim=3)
    with pytest.raises(EdvaeError, match="differ"):
        critic.momentum_update(LinearEncoder(4).double())


def test_queue_ring_buffer_matches_sequential_writes():
    """Batches of 3, 4, 7 (> K), 1, 5 keys into K = 5 slots against one-key-at-a-time writes."""
    critic = MomentumCritic(identity_encoder(2), 2, queue_size=5)  # float32 queue
    reference, pointer, size = [[0.0, 0.0] for _ in range(5)], 0, 0
    counter = 0
    for n in (3, 4, 7, 1, 5):
        keys = torch.arange(counter, counter + n, dtype=F64)[:, None].repeat(1, 2)
        counter += n
        critic.enqueue(keys)
        for key in keys.tolist():
            reference[pointer], pointer, size = key, (pointer + 1) % 5, min(size + 1, 5)
        assert critic.queue.tolist() == reference
        assert (int(critic.pointer), int(critic.size)) == (pointer, size)
        assert critic.queue.dtype == torch.float32 and critic.queue.device == keys.device
        assert critic.pointer.dtype == critic.size.dtype == torch.long
    assert (pointer, size) == (0, 5) and reference[0] == [15.0, 15.0]  # wrapped three times


def test_queue_follows_module_dtype_and_counters_stay_integers():
    critic = MomentumCritic(identity_encoder(2), 2, queue_size=4).double()
    assert critic.queue.dtype == F64 and critic.pointer.dtype == torch.long
    critic.enqueue(torch.ones(3, 2, dtype=torch.float32))
    assert critic.queue.dtype == F64 and int(critic.pointer) == 3
    with pytest.raises(EdvaeError, match="shape"):
        critic.enqueue(torch.ones(3, 5))


def test_update_enqueues_the_last_training_keys_gathered_in_order():
    critic = filled_critic(dim=3, queue_size=20, fill=0)
    x = torch.randn(4, 3, dtype=F64)
    critic.estimate(torch.randn(4, 3, dtype=F64), x)
    keys = critic.pending.clone()
    with torch.no_grad():  # evaluation passes do not replace the pending keys
        critic.estimate(torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64))
    critic.update(critic.key_encoder, gather=lambda k: torch.cat([k, -k]))
    assert int(critic.size) == 8 and critic.pending is None
    torch.testing.assert_close(critic.queue[:8], torch.cat([keys, -keys]), rtol=0, atol=0)
    critic.update(critic.key_encoder)  # nothing pending: only the EMA
    assert int(critic.size) == 8


def test_update_enqueues_every_micro_batch_of_the_step_in_order():
    critic = filled_critic(dim=3, queue_size=20, fill=0)
    x1, x2 = torch.randn(4, 3, dtype=F64), torch.randn(2, 3, dtype=F64)
    critic.estimate(torch.randn(4, 3, dtype=F64), x1)
    critic.estimate(torch.randn(2, 3, dtype=F64), x2)
    expected = torch.cat([critic.keys(x1), critic.keys(x2)])
    critic.update(critic.key_encoder)
    assert int(critic.size) == 6
    torch.testing.assert_close(critic.queue[:6], expected, rtol=0, atol=0)
    critic.estimate(torch.randn(4, 3, dtype=F64), x1)
    critic.skip()  # a skipped step enqueues nothing
    critic.update(critic.key_encoder)
    assert int(critic.size) == 6


# ---------------------------------------------------------------------------------------------
# checkpointing and gradients


def train_steps(critic, encoder, optimizer, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(6, 3, generator=g, dtype=F64)
        mu, logvar = encoder(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(6, 3, generator=g, dtype=F64)
        loss = -critic(z, mu, logvar, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        critic.update(encoder)
    return loss.detach()


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    encoder = LinearEncoder(3).double()
    critic = MomentumCritic(encoder, 3, queue_size=10, momentum=0.9, projection=4, hidden=8).double()
    optimizer = torch.optim.SGD([*encoder.parameters(), *critic.head.parameters()], lr=0.1)
    train_steps(critic, encoder, optimizer, 3, seed=1)  # 18 keys: the queue has wrapped
    assert int(critic.size) == 10 and int(critic.pointer) == 8

    buffer = io.BytesIO()
    torch.save({"encoder": encoder.state_dict(), "critic": critic.state_dict(), "opt": optimizer.state_dict()}, buffer)
    assert {"queue", "pointer", "size"} <= set(critic.state_dict())
    assert any(k.startswith("key_encoder.") for k in critic.state_dict())
    buffer.seek(0)
    saved = torch.load(buffer)
    torch.manual_seed(123)  # a different fresh model
    encoder2 = LinearEncoder(3).double()
    critic2 = MomentumCritic(encoder2, 3, queue_size=10, momentum=0.9, projection=4, hidden=8).double()
    encoder2.load_state_dict(saved["encoder"])
    critic2.load_state_dict(saved["critic"])
    optimizer2 = torch.optim.SGD([*encoder2.parameters(), *critic2.head.parameters()], lr=0.1)
    optimizer2.load_state_dict(saved["opt"])
    for (name, a), b in zip(critic.state_dict().items(), critic2.state_dict().values(), strict=True):
        assert torch.equal(a, b) and a.dtype == b.dtype, name

    last = train_steps(critic, encoder, optimizer, 2, seed=2)
    last2 = train_steps(critic2, encoder2, optimizer2, 2, seed=2)
    assert torch.equal(last, last2)
    for a, b in zip(critic.state_dict().values(), critic2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_no_gradient_reaches_the_key_encoder_or_the_queue():
    torch.manual_seed(0)
    encoder = LinearEncoder(3).double()
    critic = MomentumCritic(encoder, 3, queue_size=8, projection=4, hidden=8).double()
    critic.enqueue(unit(torch.randn(5, 4, dtype=F64)))
    x = torch.randn(6, 3, dtype=F64)
    mu, logvar = encoder(x)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    value = critic(z, mu, logvar, x)
    critic.update(encoder)  # enqueueing before backward leaves the graph intact
    value.backward()
    assert all(not p.requires_grad and p.grad is None for p in critic.key_encoder.parameters())
    assert all(not p.requires_grad and p.grad is None for p in critic.key_head.parameters())
    assert not critic.queue.requires_grad and critic.queue.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    assert all(p.grad is not None for p in critic.head.parameters())
    trainable = {n for n, p in critic.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in critic.named_parameters() if n.startswith("head.")}


def test_training_the_encoder_raises_the_momentum_estimate():
    """Maximising I_NCE on 16 clusters from an encoder that maps every x to nearly the same
    direction (I_NCE ~ 0 with a full queue): the codes learn to identify the cluster. The cap
    for K = 64 and 16 equally likely clusters is about log(K + 1) - log(1 + K / 16) = log 13."""
    torch.manual_seed(0)
    centres = 4.0 * torch.randn(16, 6, dtype=F64)
    encoder = LinearEncoder(6, logvar=-4.0).double()
    with torch.no_grad():
        encoder.linear.weight.mul_(0.01)
        encoder.linear.bias.fill_(3.0)
    critic = MomentumCritic(encoder, 6, queue_size=64, momentum=0.9).double()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-2)
    values = []
    for _ in range(80):
        x = centres[torch.randint(0, 16, (32,))] + 0.1 * torch.randn(32, 6, dtype=F64)
        mu, logvar = encoder(x)
        value = critic(mu + (0.5 * logvar).exp() * torch.randn_like(mu), mu, logvar, x)
        optimizer.zero_grad()
        (-value).backward()
        optimizer.step()
        critic.update(encoder)
        values.append(value.item())
    assert max(values) <= critic.bound()
    assert values[0] == 0.0 and max(values[2:4]) < 0.1  # empty queue; full queue, untrained
    assert sum(values[-10:]) / 10 > 2.3  # measured 2.60 (log 13 = 2.56)


# ---------------------------------------------------------------------------------------------
# make_critic


def test_make_critic_builds_each_name_with_its_defaults():
    encoder = LinearEncoder(3)
    built = {name: make_critic(name, 3, encoder=encoder) for name in CRITICS}
    assert isinstance(built["encoder"], EncoderCritic)
    assert isinstance(built["bilinear"].score, BilinearCritic)
    assert isinstance(built["mlp"].score, MLPCritic)
    momentum = built["momentum"]
    assert (momentum.queue_size, momentum.temperature, momentum.momentum) == (4096, 0.1, 0.99)
    assert momentum.queue.shape == (4096, 3) and momentum.bound(64) == math.log(4097)
    assert built["encoder"].bound(64) == math.log(64)
    assert make_critic("momentum", 3, encoder=encoder, projection=8).queue.shape == (4096, 8)
    assert make_critic("mlp", 3, hidden=7, embedding=2).score.scale == 2**-0.5


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("ema", {}, "unknown"),
        ("mlp", {"queue_size": 8}, "no option 'queue_size'"),
        ("bilinear", {"hidden": 8}, "no option 'hidden'"),
        ("momentum", {"tau": 0.1}, "no option 'tau'"),
        ("momentum", {"queue_size": 0}, "queue_size"),
        ("momentum", {"queue_size": -3}, "queue_size"),
        ("momentum", {"queue_size": 2.5}, "queue_size"),
        ("momentum", {"queue_size": True}, "queue_size"),
        ("momentum", {"temperature": 0.0}, "temperature"),
        ("momentum", {"temperature": -0.1}, "temperature"),
        ("momentum", {"temperature": float("nan")}, "temperature"),
        ("momentum", {"momentum": 1.0}, "momentum"),
        ("momentum", {"momentum": -0.01}, "momentum"),
        ("momentum", {"momentum": "0.9"}, "momentum"),
        ("momentum", {"projection": 0}, "projection"),
        ("momentum", {"key": "median"}, "key"),
        ("mlp", {"embedding": 0}, "embedding"),
    ],
)
def test_make_critic_rejects_bad_options_in_one_line(name, options, match):
    with pytest.raises(EdvaeError, match=match) as error:
        make_critic(name, 3, encoder=LinearEncoder(3), **options)
    assert "\n" not in str(error.value)


def test_make_critic_momentum_needs_an_encoder_and_inputs():
    with pytest.raises(EdvaeError, match="encoder") as error:
        make_critic("momentum", 3)
    assert "\n" not in str(error.value)
    with pytest.raises(EdvaeError, match="dim"):
        make_critic("encoder", 0)
    critic = make_critic("momentum", 3, encoder=LinearEncoder(3))
    with pytest.raises(EdvaeError, match="inputs"):
        critic(torch.randn(4, 3))
    with pytest.raises(EdvaeError, match="inputs"):
        critic(torch.randn(4, 3), x=torch.randn(5, 3))


def test_mlp_critic_has_no_parameter_infonce_cannot_see():
    """A bias on the column embedding adds g(z_i)^T b to every score of row i, which InfoNCE's
    log-softmax over j removes: its gradient is zero, so the critic must not carry one."""
    torch.manual_seed(0)
    critic = MLPCritic(3, hidden=16, embedding=8)
    z, mu, logvar = torch.randn(32, 3), torch.randn(32, 3), torch.zeros(32, 3)
    E.infonce(z, mu, logvar, critic=critic).backward()
    for name, parameter in critic.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 1e-6, name
