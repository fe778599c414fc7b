"""vlmcls.objectives: each objective through the one interface, in process on the tiny model (no script runs):
training rows or features and their collator, the loss, attaching, saving and loading what it adds, class scores
for a batch; and models saved in the format of earlier versions still load."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import COLOURS, load_tiny
from vlmcls import objectives
from vlmcls.cli import UserError
from vlmcls.inputs import InputEncoder, PromptBatches
from vlmcls.models import end_token_ids
from vlmcls.objectives.base import OPERATIONS
from vlmcls.prompt import classification_question
from vlmcls.saved import open_classifier

CLASSES = sorted(COLOURS)
QUESTION = classification_question(CLASSES)
SETTINGS = dict(train_questions="all", multi_turn=True, class_balance="none", label_smoothing=0.0,
                how_augment="none", seed=0)


def colour_data(folder, per_class=2):
    samples = [{"image": str(p), "label": name, "qa": [{"question": QUESTION, "answer": name}]}
               for name in CLASSES for p in sorted((Path(folder) / name).glob("*.png"))[:per_class]]
    return {"classes": CLASSES, "question": QUESTION, "max_image_pixels": 10**7, "samples": samples}


def test_every_objective_implements_the_interface_and_the_registry_finds_it():
    assert set(objectives.REGISTRY) == {"answer", "head"} and objectives.OBJECTIVES.choices == ("answer", "head")
    for name, objective in objectives.REGISTRY.items():
        missing = [op for op in OPERATIONS if not hasattr(objective, op)]
        assert not missing, f"objective {name} lacks {missing}"
        assert objective.NAME == name and objectives.named(name) is objective
        assert objective.SCORE_MODE in objective.MODES
    assert list(objectives.MODES) == ["score", "generate", "head"]  # no mode claimed twice


def test_each_objective_refuses_the_settings_that_mean_nothing_with_it():
    answer, head = objectives.named("answer"), objectives.named("head")
    plain = dict(freeze_backbone=False, use_lora=False, class_balance="none", augment="none", cached=True)
    for objective in (answer, head):
        objective.check_settings(**plain)
    with pytest.raises(UserError, match="apply to objective=head only"):
        answer.check_settings(**{**plain, "class_balance": "weighted"})
    head.check_settings(**{**plain, "class_balance": "weighted"})
    with pytest.raises(UserError, match="LoRA adapters would stay untrained"):
        head.check_settings(**{**plain, "freeze_backbone": True, "use_lora": True})
    with pytest.raises(UserError, match="could not vary it"):
        head.check_settings(**{**plain, "freeze_backbone": True, "augment": "hflip"})


@pytest.mark.parametrize("name", ["answer", "head"])
def test_an_objective_trains_saves_loads_and_scores_through_the_interface(name, tiny_smolvlm, colour_dataset,
                                                                          tmp_path):
    objective = objectives.named(name)
    processor, model = load_tiny(tiny_smolvlm)
    torch.manual_seed(0)
    model = objective.attach(model, len(CLASSES))
    assert objective.carries(model) == (name == "head") and objectives.objective_of(model) is objective
    added = objective.prepare(model, freeze_backbone=False)
    assert added == (["classifier_head"] if name == "head" else None)

    # the training rows and their collator, and the loss
    data = colour_data(colour_dataset)
    encoder = InputEncoder(processor, data["max_image_pixels"])
    end_ids = end_token_ids(processor, model)
    training = objective.training_set(data, encoder=encoder, processor=processor, end_ids=end_ids, features=None,
                                      **SETTINGS)
    assert set(training) == {"train_dataset", "data_collator", "loss"}
    batch = training["data_collator"]([training["train_dataset"][i] for i in range(3)])
    model.train()
    loss = training["loss"](model, batch)[0]
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    test_set = objective.test_set(data, classes=CLASSES, question=QUESTION, encoder=encoder, processor=processor,
                                  end_ids=end_ids)
    assert len(test_set) == len(data["samples"])

    # class scores for a batch, in the mode score mode means for this objective
    model.eval()
    with torch.no_grad():  # as if trained: a head that decides
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    paths = [s["image"] for s in data["samples"]]
    batch = PromptBatches(processor, QUESTION, data["max_image_pixels"], False, encoder)(paths)
    mode = objectives.prediction_mode(model, "score")
    assert mode == objective.SCORE_MODE
    before = objectives.MODES[mode](model, processor, batch, QUESTION, CLASSES)
    assert len(before) == len(paths) and all(set(r["probs"]) == set(CLASSES) for r in before)
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-4 and r["pred"] in CLASSES for r in before)

    # saved and loaded again, as fine_tune.py and the evaluation scripts do
    out = tmp_path / "saved"
    objective.save(model, out, model.save_pretrained)
    assert (out / "classifier.safetensors").is_file() == (name == "head")
    processor.save_pretrained(out)
    (out / "classes.json").write_text(json.dumps({"classes": CLASSES, "question": QUESTION, "objective": name}))
    saved = open_classifier(out)
    processor, loaded = objectives.load_for_inference(saved, device="cpu", dtype=torch.float32,
                                                      image_longest_edge=512, image_splitting=False, quantize="none")
    assert objectives.objective_of(loaded) is objective is saved.objective
    assert saved.reported_mode("score") == objective.SCORE_MODE
    after = objectives.MODES[mode](loaded, processor, batch, QUESTION, CLASSES)
    torch.testing.assert_close(torch.tensor([[r["probs"][c] for c in CLASSES] for r in after]),
                               torch.tensor([[r["probs"][c] for c in CLASSES] for r in before]),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family, lora", [("tiny_smolvlm", False), ("tiny_smolvlm", True), ("tiny_llava", False)])
def test_the_answer_loss_is_the_models_own_from_the_labelled_positions_alone(family, lora, request, tmp_path):
    """answer_loss projects only the positions whose next token is labelled, yet equals the model's own loss (which
    projects every position), with and without the Trainer's token count, and gives the same gradients; its
    per-token metrics are TRL's fused LM head's. The batch: a multi-turn chat (three labelled spans) and a
    one-answer chat, right-padded to it."""
    from trl.trainer.utils import add_fused_lm_head

    from conftest import red_image
    from vlmcls.objectives.answer import answer_loss
    from vlmcls.training import prepare_model
    processor, model = load_tiny(request.getfixturevalue(family))
    red_image().save(tmp_path / "red.png")
    qa = [{"question": QUESTION, "answer": "red"}, {"question": "Describe it.", "answer": "A red panel."},
          {"question": "What is wrong?", "answer": "Nothing at all."}]
    data = {"question": QUESTION, "samples": [{"image": str(tmp_path / "red.png"), "qa": qa},
                                              {"image": str(tmp_path / "red.png"), "qa": qa[:1]}]}
    training = objectives.named("answer").training_set(data, encoder=InputEncoder(processor, 10**7),
                                                       processor=processor, end_ids=end_token_ids(processor, model),
                                                       **SETTINGS)
    batch = training["data_collator"]([training["train_dataset"][i] for i in range(2)])
    assert training["loss"] is answer_loss
    labelled = batch["labels"][:, 1:] != -100
    assert (batch["attention_mask"] == 0).any() and labelled.sum(-1).tolist()[0] > labelled.sum(-1).tolist()[1] > 0
    torch.manual_seed(0)
    model = prepare_model(model, use_lora=lora, lora_dropout=0.0).train()  # no dropout: two passes alike
    with torch.no_grad():  # LoRA's B starts at zero: make the adapters count
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.config.use_cache = False
    trained = [p for p in model.parameters() if p.requires_grad]

    def run(loss):
        model.zero_grad()
        value = loss()
        value.backward()
        return value.detach(), [None if p.grad is None else p.grad.clone() for p in trained]  # LLaVA's unread layer
    own, own_grads = run(lambda: model(**batch).loss)
    ours, our_grads = run(lambda: answer_loss(model, batch)[0])
    torch.testing.assert_close(ours, own, rtol=1e-5, atol=1e-6)
    assert [g is None for g in our_grads] == [g is None for g in own_grads]
    assert sum(g is not None for g in own_grads) > len(trained) // 2
    for a, b in zip(our_grads, own_grads):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    count = torch.tensor(3 * int(labelled.sum()))  # as if the step had more micro-batches or processes
    torch.testing.assert_close(answer_loss(model, batch, num_items_in_batch=count)[0],
                               model(**batch, num_items_in_batch=count).loss, rtol=1e-5, atol=1e-6)

    outputs = answer_loss(model, batch)[1]
    assert outputs.logits.shape == (int(labelled.sum()), model.config.get_text_config().vocab_size)
    add_fused_lm_head(model.get_base_model() if lora else model, outputs=("log_probs", "entropy", "is_top1"))
    fused = model(**batch, fused_lm_head=True)
    torch.testing.assert_close(outputs.entropy, fused.entropy[fused.label_mask], rtol=1e-4, atol=1e-5)
    assert torch.equal(outputs.is_top1, fused.is_top1[fused.label_mask])


def test_the_heads_features_give_the_heads_own_scores(tiny_smolvlm, colour_dataset):
    from contextlib import nullcontext
    head = objectives.named("head")
    processor, model = load_tiny(tiny_smolvlm)
    torch.manual_seed(0)
    model = head.attach(model, len(CLASSES))
    data = colour_data(colour_dataset)
    encoder = InputEncoder(processor, data["max_image_pixels"])
    paths = [s["image"] for s in data["samples"]]
    states = head.features(model, processor, encoder, paths, QUESTION, 4, nullcontext)
    assert set(states) == set(paths)
    from_states = head.results_from_features(model, states, paths, CLASSES)
    batch = PromptBatches(processor, QUESTION, data["max_image_pixels"], False, encoder)(paths)
    direct = head.head_mode(model, processor, batch, QUESTION, CLASSES)
    for a, b in zip(from_states, direct):
        assert a["pred"] == b["pred"] and a["probs"] == pytest.approx(b["probs"], abs=1e-5)
    training = head.training_set(data, encoder=encoder, processor=processor, end_ids=None, features=states,
                                 **SETTINGS)
    batch = training["data_collator"]([training["train_dataset"][i] for i in range(2)])
    assert set(batch) == {"pooled", "labels"}
    assert objectives.named("answer").features(model, processor, encoder, paths, QUESTION, 4, nullcontext) is None


def test_prediction_modes_follow_the_models_objective(tiny_smolvlm):
    _, model = load_tiny(tiny_smolvlm)
    assert objectives.prediction_mode(model, "generate") == "generate"
    with pytest.raises(UserError, match="prediction=head needs a model fine-tuned with objective=head"):
        objectives.prediction_mode(model, "head")
    objectives.named("head").attach(model, 3)
    assert objectives.prediction_mode(model, "score") == "head"
    with pytest.raises(UserError, match="writes no answers"):
        objectives.prediction_mode(model, "generate")


def test_models_saved_in_the_earlier_formats_still_load(tiny_smolvlm, tmp_path):
    """A model folder as fine_tune.py wrote it before objectives were modules: classes.json with no objective
    (before the head existed) or with objective=head and the head's weights in classifier.safetensors (a float32
    "weight" and "bias", the model's own files without it), written here by hand."""
    old = tmp_path / "answer-model"
    shutil.copytree(tiny_smolvlm, old)
    (old / "classes.json").write_text(json.dumps({"classes": CLASSES, "question": QUESTION,
                                                  "max_image_pixels": 10**7}))
    _, model = objectives.load_for_inference(open_classifier(old), device="cpu", dtype=torch.float32,
                                             image_longest_edge=512, image_splitting=False, quantize="none")
    assert objectives.objective_of(model).NAME == "answer"
    assert open_classifier(old).reported_mode("score") == "score"

    headed = tmp_path / "head-model"
    shutil.copytree(tiny_smolvlm, headed)
    (headed / "classes.json").write_text(json.dumps({"classes": CLASSES, "question": QUESTION,
                                                     "max_image_pixels": 10**7, "class_bias": None,
                                                     "objective": "head"}))
    hidden = json.loads((headed / "config.json").read_text())["text_config"]["hidden_size"]
    torch.manual_seed(3)
    weights = {"weight": torch.randn(len(CLASSES), hidden), "bias": torch.randn(len(CLASSES))}
    save_file(weights, str(headed / "classifier.safetensors"))
    _, model = objectives.load_for_inference(open_classifier(headed), device="cpu", dtype=torch.float32,
                                             image_longest_edge=512, image_splitting=False, quantize="none")
    assert objectives.objective_of(model).NAME == "head"
    assert open_classifier(headed).reported_mode("score") == "head"
    assert torch.equal(model.classifier_head.weight, weights["weight"])
    assert torch.equal(model.classifier_head.bias, weights["bias"])

    (headed / "classifier.safetensors").unlink()
    with pytest.raises(UserError, match="classifier.safetensors is missing"):
        objectives.load_for_inference(open_classifier(headed), device="cpu", dtype=torch.float32,
                                      image_longest_edge=512, image_splitting=False, quantize="none")
