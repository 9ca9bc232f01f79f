"""`VQTask`: the VQ image tokenizer as a trainer Task (config.task = "vq").

Params: `{"vq": tokenizer params}`, plus `{"disc": PatchGAN params}` when
`config.loss.gan.enabled` (then `optimizer_labels` gives the two their own
optimizers, "generator" and "discriminator", from `config.optimizers`).
Model state: `{"codebook": usage counters and recent latents}` (codebook.py);
`post_update` restarts dead codes from it.

With the GAN on, `loss` is one scalar whose gradient w.r.t. the tokenizer is
the generator objective (discriminator params under stop_gradient) and w.r.t.
the discriminator is its hinge loss (on stop_gradient reconstructions), so
both train in the trainer's single jit-compiled step.
"""
from __future__ import annotations

from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vlgen_jax.errors import UserError
from vlgen_jax.train import numerics
from vlgen_jax.tasks.base import Task
from vlgen_jax.vq import codebook as codebook_lib
from vlgen_jax.vq import losses
from vlgen_jax.vq import perceptual
from vlgen_jax.vq import quantizer as quantizer_lib
from vlgen_jax.vq.discriminator import PatchDiscriminator
from vlgen_jax.vq.model import VQConfig, VQModel

sg = jax.lax.stop_gradient


class VQTask(Task):

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.model_config = VQConfig.from_config(config.model)
    self.dtype = numerics.compute_dtype(config)
    lc = config.loss
    self.loss_config = lc
    if lc.recon not in losses.RECON_LOSSES:
      raise UserError(f"config.loss.recon must be one of {losses.RECON_LOSSES}, got {lc.recon!r}")
    self.model = VQModel(self.model_config, compute_entropy=float(lc.entropy_weight) > 0,
                         dtype=self.dtype)
    self.gan = bool(lc.gan.enabled)
    self.disc = (PatchDiscriminator(int(lc.gan.ch), int(lc.gan.num_layers), dtype=self.dtype)
                 if self.gan else None)
    self.perceptual = perceptual.build(lc)
    cb = config.codebook
    if int(cb.num_recent) < 1 or int(cb.dead_after) < 1 or int(cb.usage_window) < 1:
      raise UserError("config.codebook num_recent, dead_after and usage_window must be >= 1")
    self._train_iter = None
    self._flops = None

  # ---- input -----------------------------------------------------------------
  def data_config(self) -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict(self.config.data.to_dict())
    data.tokenizer = ""  # images only
    return data

  def input_iterator(self, split: str, *, batch_size: int, train: bool, seed: int,
                     process_index: int, process_count: int) -> Iterator[dict]:
    from vlgen_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    data = self.data_config()
    if data.source == "tokens":
      raise UserError("a vq config needs image data, not data.source=tokens")
    it = pipeline.make_iterator(data, split=split, batch_size=batch_size, seed=seed, train=train,
                                process_index=process_index, process_count=process_count)
    if train:
      self._train_iter = it
    return it

  def data_stats(self) -> dict[str, int]:
    return dict(self._train_iter.stats()) if self._train_iter is not None else {}

  # ---- model -----------------------------------------------------------------
  def init(self, rng, batch: dict):
    # The whole batch: under jit the unused forward pass is dead code, and a
    # slice of it would not split over the data axes.
    x = batch["image"]
    key_vq, key_disc = jax.random.split(rng)
    params = {"vq": self.model.init(key_vq, x)["params"]}
    if self.gan:
      params["disc"] = self.disc.init(key_disc, x)["params"]
    c = self.model_config
    state = codebook_lib.init_state(c.num_codes, c.code_dim, int(self.config.codebook.num_recent))
    return params, {"codebook": codebook_lib.box_state(state)}

  def forward(self, vq_params, x):
    """(reconstruction, indices, quantizer aux, decoder features before to_rgb)."""
    z_q, indices, aux = self.model.apply({"params": vq_params}, x, method=VQModel.encode)
    features = self.model.apply({"params": vq_params}, z_q, method=VQModel.decode_features)
    x_rec = self.model.apply({"params": vq_params}, features, method=VQModel.to_pixels)
    return x_rec, indices, aux, features

  def loss(self, params, model_state, batch, rng, *, train: bool):
    lc = self.loss_config
    x = batch["image"].astype(jnp.float32)
    vq = params["vq"]
    x_rec, indices, aux, features = self.forward(vq, x)
    step = model_state["codebook"]["step"]

    rec = losses.reconstruction_loss(x_rec, x, lc.recon)
    nll = float(lc.recon_weight) * rec
    metrics = {"recon_loss": rec}
    if self.perceptual is not None:
      perc = jnp.mean(self.perceptual(x_rec, x))
      nll = nll + float(lc.perceptual_weight) * perc
      metrics["perceptual_loss"] = perc
    total = (nll + float(lc.codebook_weight) * aux["codebook_loss"] + aux["commit_loss"])
    if float(lc.entropy_weight) > 0:
      total = total + float(lc.entropy_weight) * aux["entropy_loss"]
      metrics["entropy_loss"] = aux["entropy_loss"]

    if self.gan:
      gan_total, gan_metrics = self._gan_loss(params, x, x_rec, features, step)
      total = total + gan_total
      metrics.update(gan_metrics)

    counts = quantizer_lib.code_counts(indices, self.model_config.num_codes)
    metrics.update({
        "codebook_loss": aux["codebook_loss"],
        "commit_loss": aux["commit_loss"],
        "psnr": jnp.mean(losses.psnr(x_rec, x)),
        "perplexity": quantizer_lib.perplexity(counts),
        "batch_usage": jnp.mean((counts > 0).astype(jnp.float32)),
    })
    new_state = model_state
    if train:
      cb_state = codebook_lib.update(model_state["codebook"], indices, aux["latents"],
                                     aux["errors"], rng)
      new_state = {**model_state, "codebook": cb_state}
      window = int(self.config.codebook.usage_window)
      metrics["codebook_usage"] = codebook_lib.usage(cb_state, window)
      metrics["codebook_restarts"] = model_state["codebook"]["restarts"].astype(jnp.float32)
    return total, (metrics, new_state)

  def _gan_loss(self, params, x, x_rec, features, step):
    """Generator + discriminator terms of the single scalar loss (module doc)."""
    g = self.loss_config.gan
    on = (step >= int(g.start_step)).astype(jnp.float32)
    disc_frozen = sg(params["disc"])
    logits_fake = self.disc.apply({"params": disc_frozen}, x_rec)
    g_loss = losses.hinge_g_loss(logits_fake)
    weight = jnp.ones((), jnp.float32)
    if g.adaptive:
      # Gradients of both terms w.r.t. the last decoder layer, with everything
      # else held fixed (the weight itself gets no gradient).
      vq = sg(params["vq"])
      feats = sg(features)

      def pixels(rgb):
        return self.model.apply({"params": {**vq, "to_rgb": rgb}}, feats, method=VQModel.to_pixels)

      def nll_of(rgb):
        out = pixels(rgb)
        val = float(self.loss_config.recon_weight) * losses.reconstruction_loss(
            out, x, self.loss_config.recon)
        if self.perceptual is not None:
          val = val + float(self.loss_config.perceptual_weight) * jnp.mean(self.perceptual(out, x))
        return val

      def g_of(rgb):
        return losses.hinge_g_loss(self.disc.apply({"params": disc_frozen}, pixels(rgb)))

      rgb = vq["to_rgb"]
      weight = losses.adaptive_weight(jax.grad(nll_of)(rgb)["kernel"],
                                      jax.grad(g_of)(rgb)["kernel"])
    logits_real = self.disc.apply({"params": params["disc"]}, x)
    logits_fake_d = self.disc.apply({"params": params["disc"]}, sg(x_rec))
    d_loss = losses.hinge_d_loss(logits_real, logits_fake_d)
    total = on * (float(g.weight) * weight * g_loss + d_loss)
    metrics = {"g_loss": g_loss, "d_loss": d_loss, "gan_weight": on * float(g.weight) * weight,
               "logits_real": jnp.mean(logits_real), "logits_fake": jnp.mean(logits_fake_d)}
    return total, metrics

  def post_update(self, params, model_state, rng):
    cb = self.config.codebook
    if not cb.restart:
      return params, model_state
    codes = params["vq"]["quantizer"]["codebook"]
    codes, state, num = codebook_lib.restart_dead_codes(
        codes, model_state["codebook"], rng, dead_after=int(cb.dead_after),
        noise=float(cb.restart_noise))
    state = {**state, "restarts": state["restarts"] + num}
    vq = {**params["vq"], "quantizer": {**params["vq"]["quantizer"], "codebook": codes}}
    return {**params, "vq": vq}, {**model_state, "codebook": state}

  def optimizer_labels(self, params):
    if not self.gan:
      return None
    return {k: jax.tree.map(lambda _: "discriminator" if k == "disc" else "generator", v)
            for k, v in params.items()}

  # ---- accounting --------------------------------------------------------------
  def tokens_per_example(self) -> int:
    """Image tokens (code positions) per example."""
    r = int(self.config.data.resolution) // self.model_config.factor
    return r * r

  def flops_per_example(self) -> float:
    """3x the forward FLOPs (XLA's count of the lowered, uncompiled program)."""
    if self._flops is None:
      r = int(self.config.data.resolution)
      x = jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32)
      params = jax.eval_shape(lambda k, x: nn.meta.unbox(self.init(k, {"image": x})[0]),
                              jax.random.PRNGKey(0), x)

      def forward(params, x):
        out = self.forward(params["vq"], x)[0]
        if self.gan:  # generator and discriminator passes
          out = (out, self.disc.apply({"params": params["disc"]}, x),
                 self.disc.apply({"params": params["disc"]}, out))
        return out

      # No logical rules: one example cannot be split over the data axes.
      with nn.logical_axis_rules(()):
        cost = jax.jit(forward).lower(params, x).cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      self._flops = 3.0 * float((cost or {}).get("flops", 0.0))
    return self._flops

  # ---- evaluation ----------------------------------------------------------------
  def evaluate(self, params, model_state, step: int, writer) -> dict[str, float]:
    from vlgen_jax.tasks import vq_eval as evaluation  # pylint: disable=g-import-not-at-top
    return evaluation.evaluate(self, params, step, writer)
