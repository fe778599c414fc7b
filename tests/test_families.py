"""The pipeline with a second architecture family: LLaVA (CLIP + Llama, `USER: ... ASSISTANT:` chat) beside SmolVLM.

Switching family is only --model_path; the module tests (test_training, test_prediction, test_models) check
what must follow the model in both families: the labels, the answer scores and the refusals.
"""
from conftest import COLOURS, accuracy_in, run_script


def test_llava_learns_the_classes_end_to_end(tiny_llava, colour_dataset, tmp_path):
    """Only --model_path names the family: LLaVA's processor settings, chat and end token follow the model."""
    run_script("download_dataset.py", f"--source={colour_dataset}", "--dataset_dir=images", cwd=tmp_path)
    run_script("generate_train_json.py", "--dataset_dir=images", "--question_templates=[]", cwd=tmp_path)
    trained = run_script("fine_tune.py", f"--model_path={tiny_llava}", "--output_dir=tuned", "--objective=answer",
                         "--max_steps=50",
                         "--per_device_train_batch_size=4", "--gradient_accumulation_steps=1",
                         "--learning_rate=3e-3", "--warmup_steps=5", "--logging_steps=10", "--save_steps=1000",
                         "--gradient_checkpointing=false", cwd=tmp_path)
    assert "image_longest_edge ignored" in trained.stdout  # CLIP's fixed crop, said rather than silently dropped

    run_script("vlm_benchmark_test_dataset.py", "--model_path=tuned", f"--compare_with={tiny_llava}",
               "--report_dir=scored", cwd=tmp_path)
    assert accuracy_in(tmp_path / "scored" / tiny_llava.name) <= 1 / len(COLOURS) + 0.01
    assert accuracy_in(tmp_path / "scored" / "tuned") >= 0.9
    run_script("vlm_benchmark_test_dataset.py", "--model_path=tuned", "--prediction=generate",
               "--report_dir=generated", cwd=tmp_path)
    assert accuracy_in(tmp_path / "generated") >= 0.9  # it names the class and stops
