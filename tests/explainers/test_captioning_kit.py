"""The captioning kit InterpNET and Dong et al. share (interp_ray/explainers/_captioning): the one greedy loop and the
checkpoint preamble, checked on their own (the methods' tests check them through each model)."""

import math

import pytest
import torch

from interp_ray.errors import UserError
from interp_ray.explainers._captioning.checkpoint import check_vocab_digest, read_captioner, save_captioner
from interp_ray.explainers._captioning.decoding import greedy_search
from interp_ray.text import Vocabulary

END = 1


def scripted(plan: list[list[int]], vocab: int = 5):
    """A step that makes sequence i say ``plan[i][t]`` at step t (log-probability log 0.9), counting its calls."""
    calls = []

    def step(prev, t):
        calls.append(prev.clone())
        logp = torch.full((len(plan), vocab), math.log(0.1 / (vocab - 1)))
        for i, words in enumerate(plan):
            logp[i, words[min(t, len(words) - 1)]] = math.log(0.9)
        return logp, t + 1

    return step, calls


def test_greedy_search_stops_each_sequence_at_its_end_and_scores_only_its_own_words():
    step, calls = scripted([[3, END, 4, 4], [2, 2, 2, 2]])
    ids, scores = greedy_search(step, 0, 2, max_len=4, start=0, end=END)
    assert ids == [[3], [2, 2, 2, 2]]            # the end token is dropped; max_len caps the second
    assert scores[0] == pytest.approx(2 * math.log(0.9))      # its word and its end, not the words after
    assert scores[1] == pytest.approx(4 * math.log(0.9))
    assert calls[0].tolist() == [0, 0] and calls[1].tolist() == [3, 2]   # starts from <start>, feeds its choice back


def test_greedy_search_stops_once_every_sequence_ended_and_handles_no_sequences():
    step, calls = scripted([[END], [2, END]])
    ids, _ = greedy_search(step, 0, 2, max_len=10, start=0, end=END)
    assert ids == [[], [2]] and len(calls) == 2
    assert greedy_search(step, 0, 0, max_len=10, start=0, end=END) == ([], [])


def test_the_checkpoint_preamble_checks_method_files_and_vocabulary(tmp_path):
    vocab = Vocabulary.build(["a red circle", "a blue square"])
    path = str(tmp_path / "ck")
    save_captioner(path, config={"explainer": "interpnet", "vocab_digest": vocab.digest},
                   state_dict={"w": torch.zeros(2)}, vocab=vocab, files={"extra.json": b"{}"})
    ckpt, again = read_captioner(path, "interpnet", required=["extra.json"])
    assert again == vocab and ckpt.files["extra.json"] == b"{}"
    check_vocab_digest(again, ckpt.config, path)
    with pytest.raises(UserError, match="holds a 'interpnet' explainer, not 'semantic'"):
        read_captioner(path, "semantic")
    with pytest.raises(UserError, match="has no topics.json"):
        read_captioner(path, "interpnet", required=["topics.json"])
    with pytest.raises(UserError, match="vocabulary mismatch"):
        check_vocab_digest(Vocabulary.build(["a green cross"]), ckpt.config, path)
