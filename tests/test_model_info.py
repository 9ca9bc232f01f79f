"""`vlgen model-info`: Parti sizes, abstract per-device memory equal to a real
sharded init, readable table / JSON output, and one-line errors."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from vlgen_jax import cli
from vlgen_jax.config import load_config
from vlgen_jax.train import model_info as info

# Non-embedding parameter counts of the Parti paper's models.
PARTI = {"parti_350m": 350e6, "parti_750m": 750e6, "parti_3b": 3e9, "parti_20b": 20e9}


@pytest.mark.parametrize("name", list(PARTI))
def test_parti_presets_have_the_papers_sizes(name):
  config = load_config(f"configs/parti.py:{name.removeprefix('parti_')}")
  result = info.model_info(config, info.resolve_mesh(info.config_mesh(config), None))
  params = result["params"]
  assert abs(params["non_embedding"] / PARTI[name] - 1) < 0.05, params
  assert params["total"] == params["non_embedding"] + params["embedding"]
  assert params["total"] == params["encoder"] + params["decoder"]
  # ~6 * params * tokens: the encoder sees 128 text tokens, the decoder 1024
  # image tokens (its cross-attention K/V only the text; attention on top).
  rough = 6 * (params["encoder"] * 128 + params["decoder"] * 1024)
  assert result["flops_per_example"]["train"] == pytest.approx(rough, rel=0.1)
  b = result["bytes_per_device"]
  if config.optimizer.name == "adamw":  # two fp32 moments per param
    assert b["optimizer"] == pytest.approx(2 * b["params"], rel=1e-3)
  # fp32 params split fsdp*tensor ways (norm scales and biases replicated).
  split = result["mesh"]["fsdp"] * result["mesh"]["tensor"]
  assert 4 * params["total"] / split <= b["params"] <= 1.02 * 4 * params["total"] / split
  assert result["unevenly_split_leaves"] == 0


def test_abstract_memory_equals_a_real_sharded_init():
  """The bytes model-info predicts per device are what the trainer's shardings
  really put on each of 8 CPU devices."""
  from vlgen_jax.train import mesh as mesh_lib
  from vlgen_jax.train import sharding as shd
  from vlgen_jax.train import step as step_lib
  from vlgen_jax.train.optimizer import make_optimizer
  from vlgen_jax.tasks import build_task

  config = load_config("configs/t2i_tiny.py", ["--config.mesh.data=2", "--config.mesh.fsdp=2",
                                               "--config.mesh.tensor=2"])
  predicted = info.model_info(config, {"data": 2, "fsdp": 2, "tensor": 2})["bytes_per_device"]

  task = build_task(config)
  mesh = mesh_lib.create_mesh(config)
  rules = shd.logical_axis_rules(config)
  batch = {"text_ids": np.full((8, 8), 2, np.int32), "image_tokens": np.zeros((8, 16), np.int32)}
  with shd.mesh_context(mesh, rules):
    boxed, _ = jax.eval_shape(task.init, jax.random.key(0), batch)
    tx, _ = make_optimizer(config)
    init_fn = step_lib.make_init_fn(task, tx)
    abstract = jax.eval_shape(init_fn, jax.random.key(0), batch)
    param_shardings = shd.logical_to_shardings(shd.logical_specs(boxed), mesh, rules)
    opt_shardings = shd.mirror_shardings(abstract.opt_state, abstract.params, param_shardings,
                                         mesh)
    params, opt_state = jax.jit(
        lambda k, b: (lambda s: (s.params, s.opt_state))(init_fn(k, b)),
        out_shardings=(param_shardings, opt_shardings))(jax.random.key(0), batch)

  def bytes_on(device, tree):
    return sum(s.data.nbytes for leaf in jax.tree.leaves(tree)
               for s in leaf.addressable_shards if s.device == device)

  for device in mesh.devices.flat:
    assert bytes_on(device, params) == predicted["params"]
    assert bytes_on(device, opt_state) == predicted["optimizer"]
  total = sum(x.nbytes for x in jax.tree.leaves(params))
  assert predicted["params"] < total / 2  # it is really split


def test_cli_json_and_table(capsys):
  assert cli.main(["model-info", "--config", "configs/parti.py:750m",
                   "--mesh", "data=4,fsdp=16,tensor=2", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["mesh"] == {"data": 4, "fsdp": 16, "tensor": 2} and out["devices"] == 128
  assert abs(out["params"]["non_embedding"] / 750e6 - 1) < 0.05
  assert set(out["bytes_per_device"]) == {"params", "optimizer", "total"}

  assert cli.main(["model-info", "--config", "configs/parti.py:750m", "--mesh", "data=-1,fsdp=16",
                   "--devices", "64", "--config.optimizer.name=adafactor"]) == 0
  table = capsys.readouterr().out
  assert "params (non-embedding)" in table and "755,111,936" in table
  assert "data=4, fsdp=16, tensor=1  (64 devices)" in table
  assert "optimizer (adafactor) per device" in table


def test_more_sharding_means_less_memory_per_device():
  config = load_config("configs/parti.py:3b")
  small = info.model_info(config, {"data": 1, "fsdp": 8, "tensor": 1})["bytes_per_device"]
  large = info.model_info(config, {"data": 1, "fsdp": 32, "tensor": 4})["bytes_per_device"]
  assert small["params"] / large["params"] == pytest.approx(16, rel=0.02)


@pytest.mark.parametrize("args,message", [
    (["--mesh", "data=2,pipeline=2"], "--mesh items look like"),
    (["--mesh", "data=two"], "must be an integer"),
    (["--mesh", "data=-1,fsdp=-1"], "at most one -1"),
    (["--mesh", "data=-1,fsdp=3", "--devices", "8"], "not divisible by 3"),
    (["--mesh", "data=2", "--devices", "8"], "has 2 devices"),
])
def test_bad_mesh_is_a_one_line_error(args, message, capsys):
  assert cli.main(["model-info", "--config", "configs/parti.py:350m", *args]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_non_t2i_config_is_refused(capsys):
  assert cli.main(["model-info", "--config", "configs/toy.py"]) == 2
  assert "model-info sizes t2i configs" in capsys.readouterr().err


def test_appearance_codes_are_sized_without_data_and_carry_no_optimizer_state(capsys):
  """configs/t2i_shapes.py ties codes to appearance features read from a token
  dataset; sizing needs no data, and the frozen (512, 192) features add params
  but no AdamW moments."""
  sizes = {}
  for embedding in ("appearance", "learned"):
    assert cli.main(["model-info", "--config", "configs/t2i_shapes.py", "--json",
                     f"--config.model.code_embedding={embedding}"]) == 0
    sizes[embedding] = json.loads(capsys.readouterr().out)["bytes_per_device"]
  features = 512 * 192 * 4
  appearance, learned = sizes["appearance"], sizes["learned"]
  # (AdamW: two moments per trained param, plus a few step counters.)
  assert 0 <= appearance["optimizer"] - 2 * (appearance["params"] - features) <= 64
  assert 0 <= learned["optimizer"] - 2 * learned["params"] <= 64
