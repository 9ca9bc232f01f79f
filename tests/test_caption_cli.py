"""`vlgen caption`, reranking and the captioner's run loading on the tiny demo,
whose recipe trains a captioner (a few steps) on the demo's token dataset,
with the demo's VQ and tokenizer. Outputs, R-precision plumbing and
one-line user errors."""
from __future__ import annotations

import functools
import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from vlgen_jax import cli
from vlgen_jax.eval.r_precision import r_precision
from vlgen_jax.sample.captioner import Captioner
from vlgen_jax.shapes import captioning, scenes



@pytest.fixture(scope="module")
def demo(demo_tiny_dir):
  """The tiny demo workdir: its captioner run is demo/caption."""
  assert (demo_tiny_dir / "caption" / "export").exists()
  return demo_tiny_dir


def _render_folder(folder, n=3, resolution=32):
  os.makedirs(folder, exist_ok=True)
  names = []
  for i in range(n):
    name = f"img{i}.png"
    Image.fromarray(scenes.render(scenes.sample_scene("validation", i), resolution)).save(
        os.path.join(folder, name))
    names.append(name)
  return names


def test_caption_images_writes_captions_tsv(demo, tmp_path, capsys):
  folder = tmp_path / "images"
  names = _render_folder(folder)
  (folder / "notes.txt").write_text("not an image")
  (folder / "broken.png").write_bytes(b"not a png")
  assert cli.main(["caption", "--workdir", str(demo), "--images", str(folder)]) == 0
  assert "1 unreadable files skipped" in capsys.readouterr().out
  rows = [line.split("\t") for line in (folder / "captions.tsv").read_text().splitlines()]
  assert [r[0] for r in rows] == names
  # The same captions as the library on the same images, with the run's
  # `config.caption` decoding defaults.
  captioner = Captioner.load(str(demo))
  images = [np.asarray(Image.open(folder / n).convert("RGB")) for n in names]
  want, _ = captioner.caption(captioner.encode_images(images),
                              mask_previous=captioner.config.caption.mask_previous)
  assert [r[1] for r in rows] == [" ".join(c.split()) for c in want]
  # A second run would overwrite the folder's captions.tsv: refused.
  assert cli.main(["caption", "--workdir", str(demo), "--images", str(folder)]) == 2
  assert "captions.tsv exists" in capsys.readouterr().err


@pytest.mark.parametrize("flag, masked", [("--mask-previous", True),
                                         ("--no-mask-previous", False)])
def test_mask_previous_flag_overrides_the_config(demo, tmp_path, flag, masked):
  folder = tmp_path / "images"
  names = _render_folder(folder, n=4)
  out = tmp_path / "captions.tsv"
  assert cli.main(["caption", "--workdir", str(demo), "--images", str(folder), flag,
                   "--output", str(out)]) == 0
  captioner = Captioner.load(str(demo))
  tokens = captioner.encode_images([np.asarray(Image.open(folder / n).convert("RGB"))
                                    for n in names])
  want, _ = captioner.caption(tokens, mask_previous=masked)
  rows = [line.split("\t") for line in out.read_text().splitlines()]
  assert [r[1] for r in rows] == [" ".join(c.split()) for c in want]
  assert want != captioner.caption(tokens, mask_previous=not masked)[0]  # the flag matters


def test_caption_token_dataset_with_references(demo, tmp_path, capsys):
  out = tmp_path / "val.tsv"
  assert cli.main(["caption", "--workdir", str(demo), "--tokens", str(demo / "tokens"),
                   "--split", "validation", "--num", "5", "--beam-size", "2",
                   "--output", str(out)]) == 0
  assert "exact match with the reference captions" in capsys.readouterr().out
  rows = [line.split("\t") for line in out.read_text().splitlines()]
  assert len(rows) == 5 and all(len(r) == 3 for r in rows)


def test_image_of_the_wrong_size_is_one_error_line(demo, tmp_path, capsys):
  folder = tmp_path / "big"
  _render_folder(folder, n=1, resolution=64)
  assert cli.main(["caption", "--workdir", str(demo), "--images", str(folder)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith("error: img0.png is 64x64x3")
  assert not (folder / "captions.tsv").exists()


@pytest.mark.parametrize("args, message", [
    (["--beam-size", "0"], "beam size must be a positive integer"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_option_errors_are_one_line(demo, tmp_path, capsys, args, message):
  folder = tmp_path / "imgs"
  _render_folder(folder, n=1)
  assert cli.main(["caption", "--workdir", str(demo), "--images", str(folder), *args]) == 2
  assert message in capsys.readouterr().err


def test_not_a_captioner_run(demo, capsys):
  assert cli.main(["caption", "--workdir", str(demo / "t2i"), "--images", str(demo)]) == 2
  assert "no caption run" in capsys.readouterr().err


def test_shapes_evaluation_and_r_precision_run_end_to_end(demo):
  captioner = Captioner.load(str(demo), batch_size=8)
  result, captions = captioning.shapes_caption_eval(captioner, "validation", 12, R=5)
  assert result["n"] == 12 and len(captions) == 12
  for key in ("caption_fidelity", "exact_match", "r_precision_top1", "r_precision_top5"):
    assert 0.0 <= result[key] <= 1.0, key
  assert result["r_precision_top5"] == 1.0  # 5 candidates: the own caption is always in the top 5
  images, refs = captioning.shapes_split("validation", 12, 32)
  tokens = captioner.encode_images(images)
  a = r_precision(captioner, tokens, refs, R=4, seed=1)
  assert a == r_precision(captioner, tokens, refs, R=4, seed=1)  # seeded


def test_demo_eval_with_reranking_reports_r_precision(demo):
  results = json.loads((demo / "eval_rerank" / "results.json").read_text())
  assert results["candidates"] == 2 and results["seconds_per_kept_image"] > 0
  for key in ("r_precision_top1", "r_precision_real_top1", "r_precision_top5"):
    assert 0.0 <= results[key] <= 1.0, key


def test_reranking_keeps_the_best_scored_candidate(demo):
  from vlgen_jax.sample import rerank
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.sampler import SamplingOptions
  gen = Generator.load(str(demo))
  scorer = rerank.load_scorer(str(demo), gen)
  prompts = ["a large red circle in the center", "a small blue square at the top left"]
  options = SamplingOptions(temperature=1.0)
  images, tokens, kept, scores = rerank.generate_reranked(gen, scorer, prompts, options,
                                                          candidates=3, seed=5, batch_size=4,
                                                          selection="best")
  # The candidates are plain samples i*3 + j of the seed, whatever the batching.
  plain_images, plain_tokens = gen.generate([p for p in prompts for _ in range(3)], options,
                                            seed=5, batch_size=2)
  np.testing.assert_allclose(scores.ravel(), scorer.score(plain_tokens,
                                                          [p for p in prompts for _ in range(3)]),
                             rtol=1e-5)
  best = np.argmax(scores, axis=1)
  np.testing.assert_array_equal(tokens, plain_tokens[np.arange(2) * 3 + best])
  np.testing.assert_array_equal(images, plain_images[np.arange(2) * 3 + best])
  np.testing.assert_allclose(kept, scores.max(axis=1))


def test_consistent_reranking_keeps_the_first_candidate_read_as_the_prompt(demo):
  from vlgen_jax.sample import rerank
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.sampler import SamplingOptions
  gen = Generator.load(str(demo))
  scorer = rerank.load_scorer(str(demo), gen)
  prompts = ["a large red circle in the center", "a small blue square at the top left",
             "a small green circle at the bottom", "a large white triangle on the right"]
  options = SamplingOptions(temperature=1.0)
  images, tokens, kept, scores = rerank.generate_reranked(gen, scorer, prompts, options,
                                                          candidates=4, seed=3, batch_size=8)
  expanded = [p for p in prompts for _ in range(4)]
  plain_images, plain_tokens = gen.generate(expanded, options, seed=3, batch_size=16)
  # Agreement is exactly "greedy captioning writes these ids": true for each
  # image's own greedy ids (with greedy's score), false for other ids.
  from vlgen_jax.sample import captioner as captioner_lib
  greedy_ids, greedy_scores = captioner_lib.make_captioner(scorer.model, beam_size=1)(
      scorer.params, plain_tokens)
  check = jax.jit(functools.partial(captioner_lib.score_and_agreement, scorer.model))
  own_score, own = check(scorer.params, plain_tokens, greedy_ids)
  assert np.asarray(own).all()
  np.testing.assert_allclose(own_score, greedy_scores, rtol=1e-5, atol=1e-6)
  other = np.roll(np.asarray(greedy_ids), 1, axis=0)
  differs = np.any(other != np.asarray(greedy_ids), axis=1)
  np.testing.assert_array_equal(np.asarray(check(scorer.params, plain_tokens, other)[1])[differs],
                                False)
  _, agree = scorer.score_and_agreement(plain_tokens, expanded)
  pick = rerank.select(scores, np.asarray(agree).reshape(4, 4), "consistent")
  np.testing.assert_array_equal(tokens, plain_tokens[np.arange(4) * 4 + pick])
  np.testing.assert_array_equal(images, plain_images[np.arange(4) * 4 + pick])
  np.testing.assert_allclose(kept, scores[np.arange(4), pick])


def test_consistent_selection_takes_the_first_agreeing_else_the_best():
  from vlgen_jax.sample.rerank import select
  scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.8], [0.0, 0.4, 0.1]])
  agree = np.array([[False, False, True], [True, False, True], [False, False, False]])
  np.testing.assert_array_equal(select(scores, agree, "consistent"), [2, 0, 1])
  np.testing.assert_array_equal(select(scores, agree, "best"), [1, 2, 1])


def test_contrastive_selection_takes_the_agreeing_candidate_with_the_highest_contrast():
  from vlgen_jax.sample.rerank import select
  scores = np.array([[0.1, 0.9, 0.5, 0.2], [0.3, 0.2, 0.8, 0.1], [0.0, 0.4, 0.1, 0.3],
                     [0.0, 0.1, 0.2, 0.3]])
  agree = np.array([[False, True, True, False], [False, True, True, False], [False] * 4,
                    [True, False, True, True]])
  contrast = np.array([[0.5, -1.0, 0.4, 9.0], [0.0, 0.0, 0.0, 9.0], [-2.0, -3.0, 1.0, 1.0],
                       [-1.0, 5.0, 2.0, -0.5]])
  # Row 0: 3 has the highest contrast but is not read as the prompt. Row 1:
  # no neighbours (all 0), so the first agreeing one, as "consistent". Row 2:
  # none agrees, so the best scored. Row 3: the highest agreeing contrast.
  np.testing.assert_array_equal(select(scores, agree, "contrastive", contrast), [2, 1, 1, 2])
  with pytest.raises(ValueError):
    select(scores, agree, "contrastive")


def test_caption_neighbours_differ_in_exactly_one_word():
  from vlgen_jax.sample.rerank import CaptionNeighbours
  pool = ["a red circle", "a blue circle", "a red square", "a blue square", "a red circle",
          "the red circle on top", "a red circle on top", "red circle"]
  near = CaptionNeighbours(pool)
  assert near("a red circle") == ["a blue circle", "a red square"]
  assert near("a green circle") == ["a blue circle", "a red circle"]  # the prompt need not be in it
  assert near("a red circle on top") == ["the red circle on top"]
  assert near("a purple triangle") == []
  assert CaptionNeighbours(pool, limit=1)("a red circle") == ["a blue circle"]


def test_token_log_probs_are_what_training_minimises(demo):
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.tasks.families import get_family
  gen = Generator.load(str(demo))
  captions = ["a large red circle in the center", "a small blue square at the top left"] * 5
  tokens = np.random.default_rng(0).integers(0, gen.spec.image_vocab_size,
                                             (10, gen.spec.num_image_tokens)).astype(np.int32)
  lp = gen.token_log_probs(captions, tokens, batch_size=8)
  assert lp.shape == tokens.shape and lp.dtype == np.float32 and (lp <= 0).all()
  np.testing.assert_allclose(gen.token_log_probs(captions, tokens, batch_size=16), lp, atol=1e-5)
  text = gen.tokenizer.encode_batch(captions, gen.spec.text_length)
  params = jax.device_get(gen.params)
  _, metrics = get_family(gen.spec.family).loss(gen.model, params, text, tokens,
                                                jax.random.key(0), train=False, z_loss=0.0)
  np.testing.assert_allclose(-lp.mean(), float(metrics["ce"]), rtol=1e-5)


def test_contrastive_rule_needs_the_judges_training_captions():
  import types
  from vlgen_jax.errors import UserError
  from vlgen_jax.sample import rerank
  no_tokens = types.SimpleNamespace(run="RUN", config=types.SimpleNamespace(
      data=types.SimpleNamespace(source="folder", data_dir="")))
  with pytest.raises(UserError, match="RUN was not trained on a token dataset"):
    rerank.training_neighbours(no_tokens)  # before any sampling


def test_a_masked_judge_computes_the_contrast(demo):
  """`--judge RUN`: the contrast comes from the judge's token log-probs (a
  masked run's pseudo-likelihood), and the rule keeps what it ranks first."""
  from vlgen_jax.sample import rerank
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.sampler import SamplingOptions
  gen = Generator.load(str(demo))
  judge = rerank.load_judge(str(demo / "judge"), gen)
  assert judge.spec.family == "masked" and rerank.load_judge(None, gen) is gen
  scorer = rerank.load_scorer(str(demo), gen)
  neighbours = rerank.training_neighbours(judge)
  prompts = ["a large red circle in the center", "a small blue square at the top left"]
  options = SamplingOptions(temperature=1.0)
  images, tokens, _, scores = rerank.generate_reranked(
      gen, scorer, prompts, options, candidates=3, seed=5, batch_size=8,
      selection="contrastive", judge=judge)
  expanded = [p for p in prompts for _ in range(3)]
  _, plain = gen.generate(expanded, options, seed=5, batch_size=16)
  want = np.array([(judge.token_log_probs([p], plain[n:n + 1])
                    - judge.token_log_probs(neighbours(p), np.repeat(plain[n:n + 1],
                                                                     len(neighbours(p)), 0))).min()
                   for n, p in enumerate(expanded)])
  got = rerank.contrast(judge, plain, expanded, neighbours, batch_size=8)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Not the sampled run's contrast: another model judged.
  assert np.abs(got - rerank.contrast(gen, plain, expanded, neighbours, batch_size=8)).max() > 1e-3
  agree = np.asarray(scorer.score_and_agreement(plain, expanded)[1]).reshape(2, 3)
  pick = rerank.select(scores, agree, "contrastive", want.reshape(2, 3))
  np.testing.assert_array_equal(tokens, plain[np.arange(2) * 3 + pick])


def test_demo_eval_rerank_used_the_recipes_judge(demo):
  results = json.loads((demo / "eval_rerank" / "results.json").read_text())
  assert results["rerank"] == "contrastive"
  assert results["judge"] == os.path.abspath(demo / "judge")


def test_contrastive_reranking_keeps_the_candidate_with_the_highest_contrast(demo):
  from vlgen_jax.sample import rerank
  from vlgen_jax.sample.generator import Generator
  from vlgen_jax.sample.sampler import SamplingOptions
  gen = Generator.load(str(demo))
  scorer = rerank.load_scorer(str(demo), gen)
  neighbours = rerank.training_neighbours(gen)
  prompts = ["a large red circle in the center", "a small blue square at the top left",
             "the quick brown fox"]
  assert neighbours(prompts[0]) and not neighbours(prompts[2])
  options = SamplingOptions(temperature=1.0)
  images, tokens, kept, scores = rerank.generate_reranked(
      gen, scorer, prompts, options, candidates=3, seed=5, batch_size=8, selection="contrastive")
  expanded = [p for p in prompts for _ in range(3)]
  plain_images, plain_tokens = gen.generate(expanded, options, seed=5, batch_size=16)
  # The contrast from first principles: per-token log-probs of the model's
  # own teacher-forced logits, prompt minus each neighbour, lowest of all.
  text = lambda cs: gen.tokenizer.encode_batch(cs, gen.spec.text_length)  # noqa: E731
  params = jax.device_get(gen.params)

  def lp(captions, toks):
    logits = np.asarray(gen.model.apply({"params": params}, text(captions), toks), np.float64)
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.take_along_axis(logp, toks[..., None], -1)[..., 0]
  want = np.zeros(9)
  for n, prompt in enumerate(expanded):
    alts = neighbours(prompt)
    if alts:
      own = lp([prompt], plain_tokens[n:n + 1])
      want[n] = (own - lp(alts, np.repeat(plain_tokens[n:n + 1], len(alts), 0))).min()
  got = rerank.contrast(gen, plain_tokens, expanded, neighbours, batch_size=8)
  np.testing.assert_allclose(got, want, atol=2e-4)
  assert (got[6:] == 0).all() and (got[:6] != 0).all()
  agree = np.asarray(scorer.score_and_agreement(plain_tokens, expanded)[1]).reshape(3, 3)
  pick = rerank.select(scores, agree, "contrastive", want.reshape(3, 3))
  np.testing.assert_array_equal(tokens, plain_tokens[np.arange(3) * 3 + pick])
  np.testing.assert_array_equal(images, plain_images[np.arange(3) * 3 + pick])


@pytest.mark.parametrize("args, message", [
    (["--scorer", "SCORER", "--rerank", "top"], "--rerank must be one of consistent, best"),
    (["--scorer", "SCORER", "--candidates", "0"], "--candidates must be a positive integer"),
    (["--candidates", "4"], "--candidates > 1 needs --scorer"),
    (["--scorer", "SCORER", "--candidates", "2", "--judge", "SCORER"],
     "--judge RUN is used only by --rerank contrastive"),
])
def test_rerank_option_errors_are_one_line(demo, tmp_path, capsys, args, message):
  args = [str(demo) if a == "SCORER" else a for a in args]
  assert cli.main(["sample", "--workdir", str(demo), "--prompt", "a large red circle in the center",
                   "--outdir", str(tmp_path / "out"), *args]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and err.count("\n") == 0


@pytest.mark.parametrize("role", ["scorer", "judge"])
def test_scorer_or_judge_with_another_tokenizer_is_one_error(demo, tmp_path, capsys, role):
  from vlgen_jax.text.tokenizer import TOKENIZER_ASSET, TextTokenizer
  run = "caption" if role == "scorer" else "judge"
  other = tmp_path / "other" / run
  shutil.copytree(demo / run, other)
  sentences = [f"word{i} thing{i % 7} other{i % 3}" for i in range(200)]
  TextTokenizer.train(sentences, 40).save(other / "export" / "assets" / TOKENIZER_ASSET)
  rerank = (["--scorer", str(other), "--vq-workdir", str(demo / "vq")] if role == "scorer" else
            ["--scorer", str(demo / "caption"), "--rerank", "contrastive", "--judge", str(other)])
  assert cli.main(["sample", "--workdir", str(demo), "--prompt", "a large red circle in the center",
                   "--outdir", str(tmp_path / "out"), "--candidates", "2", *rerank]) == 2
  err = capsys.readouterr().err.strip()
  assert f"the {role}" in err and "different caption tokenizers" in err
  assert err.count("\n") == 0 and not (tmp_path / "out").exists()
