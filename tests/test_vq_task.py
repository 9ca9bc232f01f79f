"""VQTask: the single GAN loss splits its gradient exactly into the generator
objective and the discriminator hinge loss; labels and config errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlgen_jax.shapes import scenes
from vlgen_jax.errors import UserError
from vlgen_jax.vq import losses
from vlgen_jax.vq.defaults import vq_config
from vlgen_jax.vq.model import VQModel
from vlgen_jax.tasks.vq import VQTask


def _config(**gan):
  c = vq_config()
  c.model.update(dict(ch=8, ch_mult=(1, 2), num_res_blocks=0, num_mid_blocks=1, patch_size=2,
                      z_channels=8, norm_groups=4, num_codes=16, code_dim=4))
  c.data.resolution = 16
  c.loss.gan.update({**dict(enabled=True, start_step=1, weight=0.5, adaptive=True, ch=8,
                            num_layers=1), **gan})
  return c


def _batch():
  images = np.stack([scenes.render(scenes.sample_scene("train", i), 32)[::2, ::2]
                     for i in range(4)])
  return {"image": jnp.asarray(images.astype(np.float32) / 127.5 - 1)}


def test_gan_loss_gradient_splits_into_generator_and_discriminator_objectives():
  task = VQTask(_config())
  batch = _batch()
  params, state = jax.jit(task.init)(jax.random.PRNGKey(0), batch)
  params, state = nn.meta.unbox(params), nn.meta.unbox(state)
  assert set(params) == {"vq", "disc"}
  rng = jax.random.PRNGKey(1)

  def total(p, state):
    return task.loss(p, state, batch, rng, train=True)[0]

  def generator_objective(vq, disc, state):
    x = batch["image"]
    x_rec, _, aux, feats = task.forward(vq, x)
    rec = losses.reconstruction_loss(x_rec, x, "l2")
    g = losses.hinge_g_loss(task.disc.apply({"params": disc}, x_rec))

    def last_layer(rgb, fn):
      out = task.model.apply({"params": {**vq, "to_rgb": rgb}}, jax.lax.stop_gradient(feats),
                             method=VQModel.to_pixels)
      return fn(out)

    rgb = jax.lax.stop_gradient(vq["to_rgb"])
    g_rec = jax.grad(lambda w: last_layer(w, lambda o: losses.reconstruction_loss(o, x, "l2")))(rgb)
    g_gan = jax.grad(lambda w: last_layer(
        w, lambda o: losses.hinge_g_loss(task.disc.apply({"params": disc}, o))))(rgb)
    weight = losses.adaptive_weight(g_rec["kernel"], g_gan["kernel"])
    on = (state["codebook"]["step"] >= 1).astype(jnp.float32)
    return rec + aux["codebook_loss"] + aux["commit_loss"] + on * 0.5 * weight * g

  def disc_objective(disc, vq, state):
    x = batch["image"]
    x_rec = jax.lax.stop_gradient(task.forward(vq, x)[0])
    on = (state["codebook"]["step"] >= 1).astype(jnp.float32)
    return on * losses.hinge_d_loss(task.disc.apply({"params": disc}, x),
                                    task.disc.apply({"params": disc}, x_rec))

  @jax.jit
  def grads(params, state):
    g = jax.grad(total)(params, state)
    g_vq = jax.grad(generator_objective)(params["vq"], params["disc"], state)
    g_disc = jax.grad(disc_objective)(params["disc"], params["vq"], state)
    return g, g_vq, g_disc

  # Before start_step the GAN is off: the discriminator gets no gradient.
  g, g_vq, g_disc = grads(params, state)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g["disc"]))
  # From start_step on, each side gets exactly its own objective's gradient.
  state_on = jax.tree.map(lambda x: x, state)
  state_on["codebook"]["step"] = jnp.asarray(1, jnp.int32)
  g, g_vq, g_disc = grads(params, state_on)
  assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g["disc"]))
  for a, b in zip(jax.tree.leaves(g["vq"]), jax.tree.leaves(g_vq)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)
  for a, b in zip(jax.tree.leaves(g["disc"]), jax.tree.leaves(g_disc)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)
  _, (metrics, _) = jax.jit(lambda p, s: task.loss(p, s, batch, rng, train=True))(params, state_on)
  assert {"g_loss", "d_loss", "gan_weight", "logits_real", "logits_fake"} <= set(metrics)
  assert float(metrics["gan_weight"]) > 0


def test_optimizer_labels_only_with_gan():
  task = VQTask(_config())
  params = {"vq": {"a": {"kernel": 1}}, "disc": {"b": {"kernel": 2, "bias": 3}}}
  assert task.optimizer_labels(params) == {
      "vq": {"a": {"kernel": "generator"}},
      "disc": {"b": {"kernel": "discriminator", "bias": "discriminator"}}}
  assert VQTask(_config(enabled=False)).optimizer_labels({"vq": {}}) is None


def test_config_errors():
  c = _config()
  c.loss.recon = "l3"
  with pytest.raises(UserError, match="config.loss.recon must be one of"):
    VQTask(c)
  c = _config()
  c.codebook.dead_after = 0
  with pytest.raises(UserError, match="must be >= 1"):
    VQTask(c)
  c = _config()
  c.data.source = "tokens"
  with pytest.raises(UserError, match="needs image data"):
    VQTask(c).input_iterator("train", batch_size=2, train=True, seed=0, process_index=0,
                             process_count=1)
